"""Pieces every ``emoca`` subcommand module shares: parser helpers and argument types."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["add_command", "positive_int", "set_threads"]


def add_command(
    subparsers: argparse._SubParsersAction, name: str, help_text: str,
    func: Callable[[argparse.Namespace], None] | None = None, description: str | None = None,
) -> argparse.ArgumentParser:
    """Add subcommand ``name``; ``description`` (default: ``help_text``) keeps its line breaks."""
    parser = subparsers.add_parser(
        name, help=help_text, description=description or help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def set_threads(threads: int | None) -> None:
    """Pin torch's CPU threads when the user gave ``--threads``."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
