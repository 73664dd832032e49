"""Subcommands of the data stage: ``emoca detect``, ``emoca manifest``, ``emoca sample-photos``.

``emoca_pipeline.cli`` calls :func:`register` on its subparsers. User errors raise
``ValueError`` / ``FileNotFoundError`` with one line naming the file or argument; the main
command prints them and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detect``, ``manifest`` and ``sample-photos`` to the ``emoca`` command."""
    _register_detect(subparsers)
    _register_manifest(subparsers)
    _register_sample_photos(subparsers)


# --------------------------------------------------------------------------------------------
# detect
# --------------------------------------------------------------------------------------------


def _register_detect(subparsers: argparse._SubParsersAction) -> None:
    from emoca_pipeline.io.images import DEFAULT_MAX_PIXELS

    description = (
        "Find faces and landmarks in every image of INPUT (a folder, a .txt/.csv/.parquet "
        "file list, or a video) and write Parquet shards OUT/shard-00000.parquet ... with "
        "one row per face and one row per image without a face (its status says why), "
        "then OUT/summary.json. A rerun skips finished shards."
    )
    parser = subparsers.add_parser("detect", help="Detect faces and landmarks into Parquet "
                                   "shards.", description=description)
    parser.add_argument("input", type=Path, metavar="INPUT",
                        help="image folder, file list (.txt/.lst/.csv/.parquet) or video")
    parser.add_argument("out", type=Path, metavar="OUT", help="output folder for the shards")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes (a Dask LocalCluster when > 1; default 1: in-process)")
    parser.add_argument("--landmarker", choices=("mediapipe", "fan", "gt"), default="mediapipe",
                        help="mediapipe (default, offline), fan (needs its weights cached) or "
                             "gt (landmarks from --labels)")
    parser.add_argument("--labels", type=Path, nargs="+", action="extend", default=[],
                        metavar="FILE",
                        help="for --landmarker gt: a synthetic.parquet table or AffectNet CSVs "
                             "(default: INPUT when it is a Parquet list with landmarks)")
    parser.add_argument("--max-faces", type=int, default=1,
                        help="faces kept per image, largest first (default 1)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"larger images get status too_large (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--shard-size", type=int, default=1000,
                        help="images per shard (default 1000)")
    parser.add_argument("--chunk-size", type=int, default=1000,
                        help="images per Dask task at most (default 1000)")
    parser.add_argument("--shard", type=int, metavar="K",
                        help="process only shard K (one job per shard), using OUT's plan")
    parser.add_argument("--plan-only", action="store_true",
                        help="only list INPUT and write OUT/plan.json and OUT/listing.parquet")
    parser.add_argument("--image-root", type=Path,
                        help="folder that relative entries of a file list are relative to "
                             "(default: the list's folder)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_detect)


def _detect(args: argparse.Namespace) -> None:
    from emoca_pipeline.data.detect import (
        DetectSettings,
        detect_shard,
        plan_detection,
        run_detection,
    )

    settings = DetectSettings(
        landmarker=args.landmarker, labels=tuple(str(path) for path in args.labels),
        max_faces=args.max_faces, max_pixels=args.max_pixels, shard_size=args.shard_size,
        chunk_size=args.chunk_size,
        image_root=None if args.image_root is None else str(args.image_root),
    )
    if args.plan_only and args.shard is not None:
        raise ValueError("--plan-only and --shard exclude each other")
    if args.plan_only:
        plan = plan_detection(args.input, args.out, settings)
        print(f"detect: {plan.num_images} images in {plan.num_shards} shards of "
              f"{plan.shard_size}; plan written to {args.out}")
        return
    if args.shard is not None:
        summary = detect_shard(args.out, args.shard, settings, args.input,
                               workers=args.workers, progress=not args.no_progress)
        print(f"shard {args.shard}: " + summary.format().removeprefix("detect: "))
        sys.stdout.flush()
        return
    summary = run_detection(args.input, args.out, settings, workers=args.workers,
                            progress=not args.no_progress)
    print(summary.format())
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------


def _register_manifest(subparsers: argparse._SubParsersAction) -> None:
    description = (
        "Join detection shards with labels (AffectNet training.csv/validation.csv, a "
        "synthetic.parquet table, or none for a plain folder), assign splits and write "
        "OUT/dataset=NAME/split=.../part-0.parquet. "
        "`emoca manifest --stats MANIFEST_DIR` prints faces per dataset, split and class."
    )
    parser = subparsers.add_parser("manifest", help="Build a Parquet manifest from detections "
                                   "and labels, or print its counts.", description=description)
    parser.add_argument("detections", type=Path, nargs="?", metavar="DETECTIONS",
                        help="folder written by `emoca detect` (with --stats alone: the "
                             "manifest folder)")
    parser.add_argument("out", type=Path, nargs="?", metavar="OUT", help="manifest folder")
    parser.add_argument("--dataset", help="dataset name (the partition dataset=NAME)")
    parser.add_argument("--labels", type=Path, nargs="+", action="extend", default=[],
                        metavar="FILE",
                        help="label files: AffectNet's training.csv and validation.csv, or a "
                             "synthetic.parquet table")
    parser.add_argument("--validation-split", choices=("val", "test"), default="test",
                        help="split of AffectNet's validation.csv (default test)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="unlabelled folders: share of images in val (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="unlabelled folders: share of images in test (default 0.1)")
    parser.add_argument("--stats", action="store_true",
                        help="print faces per dataset, split and class (after building, or of "
                             "the folder given alone)")
    parser.add_argument("--stats-out", type=Path,
                        help="with --stats: also write the counts as JSON here")
    parser.set_defaults(func=_manifest)


def _manifest(args: argparse.Namespace) -> None:
    from emoca_pipeline.data.manifest import ManifestSettings, build_manifest, stats

    if args.detections is None:
        raise ValueError("manifest needs DETECTIONS OUT --dataset NAME, or --stats MANIFEST_DIR")
    if args.out is None:
        if not args.stats:
            raise ValueError("manifest needs OUT (or --stats to read DETECTIONS as a manifest "
                             "folder)")
        if args.dataset or args.labels:
            raise ValueError("--stats MANIFEST_DIR takes no --dataset or --labels")
        stats_dir = args.detections
    else:
        if not args.dataset:
            raise ValueError("manifest DETECTIONS OUT needs --dataset NAME")
        settings = ManifestSettings(args.validation_split, args.val_fraction, args.test_fraction)
        summary = build_manifest(args.detections, args.out, args.dataset,
                                 [str(path) for path in args.labels], settings)
        print(summary.format())
        stats_dir = args.out
    if args.stats:
        counts = stats(stats_dir)
        print(counts.format())
        if args.stats_out:
            _write_json(args.stats_out, counts.to_dict())
    elif args.stats_out:
        raise ValueError("--stats-out needs --stats")


# --------------------------------------------------------------------------------------------
# sample-photos
# --------------------------------------------------------------------------------------------


def _register_sample_photos(subparsers: argparse._SubParsersAction) -> None:
    description = ("Write real photos that scikit-image ships (astronaut and cameraman: one "
                   "face each; coffee: none) to OUT_DIR, for the MediaPipe path of the DAG.")
    parser = subparsers.add_parser("sample-photos", help="Write sample photos with real faces.",
                                   description=description)
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.set_defaults(func=_sample_photos)


def _sample_photos(args: argparse.Namespace) -> None:
    from emoca_pipeline.data.detect import write_sample_photos

    for path in write_sample_photos(args.out_dir):
        print(f"wrote {path}")


def _write_json(path: Path, value: object) -> None:
    from emoca_pipeline.io import atomic_write_text

    atomic_write_text(path, json.dumps(value, indent=2) + "\n")
