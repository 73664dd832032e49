"""The ``emoca`` command: one subcommand per pipeline stage; Snakemake rules call these.

Errors a user can cause (a missing file, a bad value) end the command with one line on
stderr, naming the file or argument, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


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


def _add(
    subparsers: argparse._SubParsersAction, name: str, help_text: str,
    func: Callable[[argparse.Namespace], None] | None = None,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``emoca`` and all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="emoca",
        description="EMOCA 3D face reconstruction with emotion, as a batch pipeline.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    assets = _add(commands, "assets", "Make or inspect FLAME-format asset folders.")
    assets_commands = assets.add_subparsers(dest="assets_command", metavar="KIND", required=True)
    procedural = _add(
        assets_commands, "procedural",
        "Write a procedural FLAME-format model (official file names and formats) to OUT_DIR.",
        _assets_procedural,
    )
    procedural.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    procedural.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    flame = _add(commands, "flame", "FLAME model utilities.")
    flame_commands = flame.add_subparsers(dest="flame_command", metavar="ACTION", required=True)
    check = _add(
        flame_commands, "check",
        "Load a FLAME asset folder through the safe loader, run the layer once, print a summary.",
        _flame_check,
    )
    check.add_argument("assets", type=Path, metavar="ASSETS", help="asset folder or model file")
    check.add_argument("--n-shape", type=int, default=100, help="identity components (<= 300)")
    check.add_argument("--n-exp", type=int, default=50, help="expression components (<= 100)")
    check.add_argument("--out", type=Path, help="also write the summary as JSON here")
    from emoca_pipeline.data.cli import register as register_data
    from emoca_pipeline.training import cli as emotion_cli
    from emoca_pipeline.training import emoca_cli

    register_data(commands)
    train = _add(commands, "train", "Train networks (EMOCA stages, emotion networks).")
    train_commands = train.add_subparsers(dest="train_command", metavar="NETWORK", required=True)
    emoca_cli.register_train(train_commands)
    emotion_cli.register_train(train_commands)
    predict = _add(commands, "predict", "Run trained networks on a table of images or codes.")
    emotion_cli.register_predict(
        predict.add_subparsers(dest="predict_command", metavar="NETWORK", required=True))
    evaluate = _add(commands, "eval", "Evaluation tables in the paper's format.")
    emotion_cli.register_eval(
        evaluate.add_subparsers(dest="eval_command", metavar="TABLE", required=True))
    emoca_cli.register_import_checkpoint(commands)

    synth = _add(
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``emoca`` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, KeyError, pickle.UnpicklingError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"emoca: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
