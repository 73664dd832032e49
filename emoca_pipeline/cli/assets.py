"""``emoca assets procedural``, ``emoca flame check`` and ``emoca synth``: the generated inputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emoca_pipeline.cli.common import add_command

__all__ = ["register"]


def _assets_procedural(args: argparse.Namespace) -> None:
    from emoca_pipeline.assets import generate_procedural_assets

    out = generate_procedural_assets(args.out_dir, seed=args.seed)
    print(f"wrote procedural FLAME-format assets to {out}")


def _flame_check(args: argparse.Namespace) -> None:
    from emoca_pipeline.flame.check import check_flame_assets

    report = check_flame_assets(args.assets, n_shape=args.n_shape, n_exp=args.n_exp)
    text = json.dumps(report, indent=2)
    if args.out:
        from emoca_pipeline.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)


def _synth(args: argparse.Namespace) -> None:
    from emoca_pipeline.synth import SynthSettings, generate_synthetic_dataset

    settings = SynthSettings(n_images=args.n, seed=args.seed, image_size=args.image_size,
                             images_per_identity=args.images_per_identity)
    out = generate_synthetic_dataset(args.out_dir, settings, assets=args.assets)
    print(f"wrote {settings.n_images} synthetic images and synthetic.parquet to {out}")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``assets``, ``flame`` and ``synth`` to the ``emoca`` command."""
    assets = add_command(commands, "assets", "Make or inspect FLAME-format asset folders.")
    assets_commands = assets.add_subparsers(dest="assets_command", metavar="KIND", required=True)
    procedural = add_command(
        assets_commands, "procedural",
        "Write a procedural FLAME-format model (official file names and formats) to OUT_DIR.",
        _assets_procedural,
    )
    procedural.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    procedural.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    flame = add_command(commands, "flame", "FLAME model utilities.")
    flame_commands = flame.add_subparsers(dest="flame_command", metavar="ACTION", required=True)
    check = add_command(
        flame_commands, "check",
        "Load a FLAME asset folder through the safe loader, run the layer once, print a summary.",
        _flame_check,
    )
    check.add_argument("assets", type=Path, metavar="ASSETS", help="asset folder or model file")
    check.add_argument("--n-shape", type=int, default=100, help="identity components (<= 300)")
    check.add_argument("--n-exp", type=int, default=50, help="expression components (<= 100)")
    check.add_argument("--out", type=Path, help="also write the summary as JSON here")
    synth = add_command(
        commands, "synth",
        "Render a synthetic labelled face dataset (photos, landmarks, FLAME codes, emotions).",
        _synth,
    )
    synth.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    synth.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--assets", type=Path,
                       help="FLAME asset folder (default: procedural assets for the seed)")
    synth.add_argument("--image-size", type=int, default=320,
                       help="side of the square photos (default 320)")
    synth.add_argument("--images-per-identity", type=int, default=4,
                       help="photos of each identity (default 4)")
