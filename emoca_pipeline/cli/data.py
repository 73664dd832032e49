"""Subcommands of the data stage: ``emoca detect``, ``emoca manifest``, ``emoca sample-photos``.

``emoca detect run|plan|shard|summary`` and ``emoca manifest build|stats``: ``run`` does
the whole detection stage in one process; ``plan``, ``shard`` and ``summary`` are its three
steps, one job each in the Snakemake rules. ``emoca_pipeline.cli`` calls :func:`register`
on its subparsers. User errors raise ``ValueError`` / ``FileNotFoundError`` with one line
naming the file or argument; the main command prints them and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from emoca_pipeline.cli.common import add_command, positive_int

if TYPE_CHECKING:
    from emoca_pipeline.data.detect import DetectSettings

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detect``, ``manifest`` and ``sample-photos`` to the ``emoca`` command."""
    _register_detect(subparsers)
    _register_manifest(subparsers)
    photos = add_command(subparsers, "sample-photos", "Write sample photos with real faces.",
                         _sample_photos,
                         description="Write real photos that scikit-image ships (astronaut "
                                     "and cameraman: one face each; coffee: none) to OUT_DIR, "
                                     "for the MediaPipe path of the DAG.")
    photos.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                        help="folder for the photos (created)")


# --------------------------------------------------------------------------------------------
# detect
# --------------------------------------------------------------------------------------------


def _add_detect_arguments(parser: argparse.ArgumentParser) -> None:
    """INPUT, OUT and the settings every ``detect`` step must agree on."""
    from emoca_pipeline.data.chunk import LANDMARKERS
    from emoca_pipeline.io.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

    parser.add_argument("input", type=Path, metavar="INPUT",
                        help="image folder, file list (.txt/.lst/.csv/.parquet) or video")
    parser.add_argument("out", type=Path, metavar="OUT", help="output folder for the shards")
    parser.add_argument("--landmarker", choices=LANDMARKERS, default="mediapipe",
                        help="mediapipe (default, offline), fan (needs its weights cached) or "
                             "gt (landmarks from --labels)")
    parser.add_argument("--labels", type=Path, action="append", default=[], metavar="FILE",
                        help="for --landmarker gt: a synthetic.parquet table or an AffectNet "
                             "CSV; repeat the flag for several files (default: INPUT when it "
                             "is a Parquet list with landmarks)")
    parser.add_argument("--max-faces", type=positive_int, default=1,
                        help="faces kept per image, largest first (default 1); the summary "
                             "counts the faces dropped")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help="images declaring more pixels get status too_large before "
                             f"decoding (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--max-bytes", type=positive_int, default=DEFAULT_MAX_BYTES,
                        help="files larger than this get status too_large without being "
                             f"read (default {DEFAULT_MAX_BYTES})")
    parser.add_argument("--shard-size", type=positive_int, default=1000,
                        help="images per shard (default 1000)")
    parser.add_argument("--chunk-size", type=positive_int, default=1000,
                        help="images per Dask task at most (default 1000)")
    parser.add_argument("--image-root", type=Path,
                        help="folder that relative entries of a file list are relative to "
                             "(default: the list's folder)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="processes: a Dask LocalCluster when > 1 and the input has at "
                             "least 400 images per worker, else in-process (default 1)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar on stderr")


def _register_detect(subparsers: argparse._SubParsersAction) -> None:
    detect = add_command(
        subparsers, "detect", "Detect faces and landmarks into Parquet shards.",
        description=(
            "Find faces and landmarks in every image of INPUT (a folder, a .txt/.csv/.parquet "
            "file list, or a video) and write Parquet shards OUT/shard-00000.parquet ... with\n"
            "one row per face and one row per image without a face (its status says why).\n\n"
            "  run      the whole stage in one process: plan, every shard, summary\n"
            "  plan     list INPUT: OUT/plan.json and OUT/listing.parquet\n"
            "  shard    one shard (one job per shard), from OUT's plan\n"
            "  summary  check that every shard is there; print and write OUT/summary.json\n\n"
            "Reruns skip finished shards. All steps of one OUT take the same settings."),
    )
    steps = detect.add_subparsers(dest="detect_command", metavar="STEP", required=True)
    run = add_command(steps, "run", "Plan, detect every shard and summarise.", _detect_run)
    _add_detect_arguments(run)
    _add_run_arguments(run)
    plan = add_command(steps, "plan", "List INPUT and write OUT's plan.", _detect_plan)
    _add_detect_arguments(plan)
    shard = add_command(steps, "shard", "Detect the faces of one shard.", _detect_shard)
    _add_detect_arguments(shard)
    shard.add_argument("--shard", type=int, required=True, metavar="K",
                       help="the shard to process, 0 <= K < the plan's number of shards")
    _add_run_arguments(shard)
    summary = add_command(steps, "summary", "Check every shard; write OUT/summary.json.",
                          _detect_summary)
    _add_detect_arguments(summary)
    summary.add_argument("--no-progress", action="store_true",
                         help="no progress bar on stderr (for shards still to do)")


def _settings(args: argparse.Namespace) -> DetectSettings:
    from emoca_pipeline.data.detect import DetectSettings

    return DetectSettings(
        landmarker=args.landmarker, labels=tuple(str(path) for path in args.labels),
        max_faces=args.max_faces, max_pixels=args.max_pixels, max_bytes=args.max_bytes,
        shard_size=args.shard_size, chunk_size=args.chunk_size,
        image_root=None if args.image_root is None else str(args.image_root),
    )


def _detect_run(args: argparse.Namespace) -> None:
    from emoca_pipeline.data.detect import run_detection

    summary = run_detection(args.input, args.out, _settings(args), workers=args.workers,
                            progress=not args.no_progress)
    _print(summary.format())


def _detect_plan(args: argparse.Namespace) -> None:
    from emoca_pipeline.data.detect import plan_detection

    plan = plan_detection(args.input, args.out, _settings(args))
    _print(f"detect: {plan.num_images} images in {plan.num_shards} shards of "
           f"{plan.shard_size}; plan written to {args.out}")


def _detect_shard(args: argparse.Namespace) -> None:
    from emoca_pipeline.data.detect import detect_shard

    summary = detect_shard(args.out, args.shard, _settings(args), args.input,
                           workers=args.workers, progress=not args.no_progress)
    _print(f"shard {args.shard}: " + summary.format().removeprefix("detect: "))


def _detect_summary(args: argparse.Namespace) -> None:
    # The summary of a finished OUT: run_detection lists nothing new and skips every shard.
    from emoca_pipeline.data.detect import run_detection

    summary = run_detection(args.input, args.out, _settings(args),
                            progress=not args.no_progress)
    _print(summary.format())


# --------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------


def _register_manifest(subparsers: argparse._SubParsersAction) -> None:
    manifest = add_command(
        subparsers, "manifest", "Build a Parquet manifest from detections and labels, or "
        "print its counts.",
        description=(
            "  build  join detection shards with labels (AffectNet training.csv/validation.csv,\n"
            "         a synthetic.parquet table, or none for a plain folder), assign splits\n"
            "         and write OUT/dataset=NAME/split=.../part-0.parquet\n"
            "  stats  print faces per dataset, split and class of a manifest folder"),
    )
    steps = manifest.add_subparsers(dest="manifest_command", metavar="STEP", required=True)
    build = add_command(steps, "build", "Join detections with labels into OUT/dataset=NAME/.",
                        _manifest_build)
    build.add_argument("detections", type=Path, metavar="DETECTIONS",
                       help="folder written by `emoca detect`")
    build.add_argument("out", type=Path, metavar="OUT",
                       help="manifest folder (shared by datasets)")
    build.add_argument("--dataset", required=True,
                       help="dataset name (the partition dataset=NAME)")
    build.add_argument("--labels", type=Path, action="append", default=[], metavar="FILE",
                       help="a label file: AffectNet's training.csv or validation.csv, or a "
                            "synthetic.parquet table; repeat the flag for several files")
    build.add_argument("--validation-split", choices=("val", "test"), default="test",
                       help="split of AffectNet's validation.csv (default test)")
    build.add_argument("--val-fraction", type=float, default=0.1,
                       help="unlabelled folders: share of images in val (default 0.1)")
    build.add_argument("--test-fraction", type=float, default=0.1,
                       help="unlabelled folders: share of images in test (default 0.1)")
    stats = add_command(steps, "stats", "Print faces per dataset, split and class.",
                        _manifest_stats)
    stats.add_argument("manifest", type=Path, metavar="MANIFEST",
                       help="manifest folder (written by `emoca manifest build`)")
    stats.add_argument("--out", type=Path, metavar="FILE",
                       help="also write the counts as JSON here")


def _manifest_build(args: argparse.Namespace) -> None:
    from emoca_pipeline.data.manifest import ManifestSettings, build_manifest

    settings = ManifestSettings(args.validation_split, args.val_fraction, args.test_fraction)
    summary = build_manifest(args.detections, args.out, args.dataset,
                             [str(path) for path in args.labels], settings)
    _print(summary.format())


def _manifest_stats(args: argparse.Namespace) -> None:
    from emoca_pipeline.data.manifest import stats
    from emoca_pipeline.io import atomic_write_text

    counts = stats(args.manifest)
    _print(counts.format())
    if args.out:
        atomic_write_text(args.out, json.dumps(counts.to_dict(), indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# sample-photos
# --------------------------------------------------------------------------------------------


def _sample_photos(args: argparse.Namespace) -> None:
    from emoca_pipeline.assets.sample_photos import write_sample_photos

    for path in write_sample_photos(args.out_dir):
        print(f"wrote {path}")


def _print(text: str) -> None:
    print(text)
    sys.stdout.flush()
