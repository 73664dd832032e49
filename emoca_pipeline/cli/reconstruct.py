"""``emoca reconstruct INPUT OUT --model MODEL``: EMOCA codes (and optional meshes, renders,
overlays) for every face of a manifest, detection shards, a table, an image folder or a video."""

from __future__ import annotations

import argparse
from pathlib import Path

from emoca_pipeline.cli.common import add_command, positive_int, set_threads

__all__ = ["register"]

DESCRIPTION = """\
Apply an EMOCA model.pt (from `emoca train` or `emoca import-checkpoint`) to every face of
INPUT and write OUT/shard-{I:05d}-of-{N:05d}.parquet: one row per face with the codes
(shape, tex, exp, pose, cam, light, detail), the crop transform, the 68 and 105 landmarks in
original-image pixels and a status; images without a usable face are rows with a status.

INPUT: a manifest folder (`emoca manifest`), a detection-shard folder (`emoca detect`), a
Parquet table with path + landmarks/bbox (synthetic.parquet), an image folder (faces found
with MediaPipe) or a video.

Item k of INPUT goes to shard k mod N. Progress is kept in parts of --part-size items: a
killed run resumes where it stopped, and a rerun skips a finished shard (same model and
input). Examples:
  emoca reconstruct photos/ out/ --model emoca/model.pt --save overlays
  emoca reconstruct clip.mp4 out/ --model emoca/model.pt --save overlays --no-detail
  emoca reconstruct manifest/ out/ --model emoca/model.pt --shard 3/16 --device cuda
"""


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        shard, num = int(index), int(count)
    except ValueError:
        raise ValueError(f"--shard: expected I/N (e.g. 0/4), got {text!r}") from None
    if not sep or num < 1 or not 0 <= shard < num:
        raise ValueError(f"--shard: expected I/N with 0 <= I < N, got {text!r}")
    return shard, num


def _save(text: str) -> tuple[str, ...]:
    from emoca_pipeline.inference.reconstruct import SAVE_CHOICES

    items = tuple(part.strip() for part in text.split(",") if part.strip())
    for item in items:
        if item not in SAVE_CHOICES:
            raise ValueError(f"--save: unknown item {item!r}; choose from "
                             f"{','.join(SAVE_CHOICES)}")
    return items


def _run(args: argparse.Namespace) -> None:
    from emoca_pipeline.inference.reconstruct import ReconstructSettings, reconstruct

    shard, num_shards = _shard(args.shard)
    save = _save(args.save)
    if not args.model.is_file():
        raise FileNotFoundError(f"--model {args.model}: no such model file")
    if not args.input.exists():
        raise FileNotFoundError(f"{args.input}: no such input")
    set_threads(args.threads)
    settings = ReconstructSettings(
        shard=shard, num_shards=num_shards, device=args.device, batch_size=args.batch_size,
        precision=args.precision, save=save, detail=not args.no_detail,
        workers=args.workers, part_size=args.part_size, max_faces=args.max_faces,
        split=args.split)
    result = reconstruct(args.input, args.out, args.model, settings)
    state = "already finished" if result.skipped else f"{result.faces_ok} faces ok"
    print(f"{result.path}: {result.rows} rows, {state} ({result.seconds:.1f} s)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``reconstruct`` to the ``emoca`` command."""
    parser = add_command(subparsers, "reconstruct", "Reconstruct faces with an EMOCA model "
                         "into Parquet shards (codes, landmarks, optional meshes/overlays).",
                         _run, DESCRIPTION)
    parser.add_argument("input", type=Path, metavar="INPUT",
                        help="manifest folder, detection-shard folder, Parquet table, image "
                             "folder or video")
    parser.add_argument("out", type=Path, metavar="OUT", help="output folder")
    parser.add_argument("--model", type=Path, required=True, metavar="MODEL",
                        help="model.pt written by `emoca train` or `emoca import-checkpoint`")
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="write shard I of N (item k goes to shard k mod N; default 0/1)")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda if available, else cpu), cpu, cuda or cuda:K")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="B",
                        help="faces per forward pass (default 32; 256 suits a large GPU)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="autocast precision of the encoders (auto: bf16 on CUDA and "
                             "on CPUs with native bf16, else fp32)")
    parser.add_argument("--save", default="", metavar="ITEMS",
                        help="comma-separated extras: obj (coarse and detail OBJ with the "
                             "input as UV texture), renders (PNG shape/shaded/detail), "
                             "overlays (on the original photo; an .mp4 for a video)")
    parser.add_argument("--no-detail", action="store_true",
                        help="skip E_detail/D_detail (the detail column is NaN)")
    parser.add_argument("--workers", type=int, default=2, metavar="W",
                        help="DataLoader workers that decode, find faces and crop (0: in "
                             "the main process; default 2)")
    parser.add_argument("--threads", type=positive_int, metavar="T",
                        help="torch CPU threads of the main process")
    parser.add_argument("--part-size", type=positive_int, default=256, metavar="K",
                        help="items per resumable part file (default 256)")
    parser.add_argument("--max-faces", type=positive_int, default=1, metavar="F",
                        help="faces per image for folder and video inputs (largest first; "
                             "default 1)")
    parser.add_argument("--split", metavar="NAME",
                        help="only rows of this split (tables with a split column)")
