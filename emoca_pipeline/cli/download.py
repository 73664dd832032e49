"""``emoca download`` (HTTP(S) with resume, retries, SHA-256) and ``emoca check-data``
(licensed data placed by hand: FLAME, released EMOCA models, AffectNet, NoW)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emoca_pipeline.cli.common import add_command

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``download`` and ``check-data`` to the ``emoca`` command."""
    parser = add_command(
        subparsers, "download", "Download a file over HTTP(S), resumable, checked by SHA-256.",
        func=_download,
        description=(
            "Download URL to OUT through OUT.part: an interrupted transfer resumes (HTTP\n"
            "Range), transient errors are retried with backoff, and OUT appears (atomic\n"
            "rename) only when its SHA-256 matches. A checksum mismatch or a permanent HTTP\n"
            "error removes OUT.part; a transfer that failed after its retries keeps it only\n"
            "when the server can resume it."),
    )
    parser.add_argument("url", metavar="URL", help="http:// or https:// URL")
    parser.add_argument("out", type=Path, metavar="OUT", help="file to write")
    parser.add_argument("--sha256", required=True, metavar="HEX",
                        help="expected SHA-256 of the file (64 hex digits)")
    parser.add_argument("--retries", type=int, default=5, metavar="N",
                        help="retries after transient failures (default 5)")
    parser.add_argument("--backoff", type=float, default=1.0, metavar="SECONDS",
                        help="pause before the first retry, doubled each time (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="connection idle timeout (default 60)")

    from emoca_pipeline.io.download import GATED_DATA

    kinds = "\n".join(f"  {kind:10s} {spec.name}: {spec.site} (config: {spec.config_key})"
                      for kind, spec in GATED_DATA.items())
    check = add_command(
        subparsers, "check-data", "Check licensed data placed by hand (FLAME, EMOCA models, "
        "AffectNet, NoW).", func=_check_data,
        description=(
            "Check that PATH holds the files of KIND (names and formats; SHA-256 of the files\n"
            "given with --sha256). On failure one line says what to get, from where, and\n"
            f"where to put it. Kinds:\n{kinds}"),
    )
    check.add_argument("kind", choices=sorted(GATED_DATA), metavar="KIND",
                       help=f"one of {', '.join(sorted(GATED_DATA))}")
    check.add_argument("path", type=Path, metavar="PATH", help="the folder the config names")
    check.add_argument("--sha256", nargs="+", action="extend", default=[], metavar="FILE=HEX",
                       help="expected SHA-256 of a file, by path relative to PATH")
    check.add_argument("--out", type=Path, metavar="JSON", help="write the report here")


def _download(args: argparse.Namespace) -> None:
    from emoca_pipeline.io.download import download

    if args.retries < 0:
        raise ValueError(f"--retries: expected >= 0, got {args.retries}")
    path = download(args.url, args.out, args.sha256, retries=args.retries,
                    backoff=args.backoff, timeout=args.timeout)
    print(f"wrote {path} (sha256 ok)")


def _check_data(args: argparse.Namespace) -> None:
    from emoca_pipeline.io.atomic import atomic_write_text
    from emoca_pipeline.io.download import check_data

    sums: dict[str, str] = {}
    for item in args.sha256:
        name, sep, digest = item.rpartition("=")
        if not sep or not name:
            raise ValueError(f"--sha256: expected FILE=HEX, got {item!r}")
        sums[name] = digest
    report = check_data(args.kind, args.path, sums)
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"{args.kind}: {args.path} ok ({report['checked_by']})")
