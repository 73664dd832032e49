"""Pieces every ``emoca`` subcommand module shares: parser helpers and argument types."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_command", "add_mlflow_options", "positive_int", "set_threads"]


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


def add_mlflow_options(parser: argparse.ArgumentParser, experiment_default: str,
                       run_name: str | None = None) -> None:
    """``--tracking-uri``, ``--results``, ``--experiment`` and, when ``run_name`` (the default
    run name, shown in the help) is given, ``--run-name``: where a job's MLflow run goes."""
    group = parser.add_argument_group("MLflow (a child run of the workflow's run)")
    group.add_argument("--tracking-uri", metavar="URI",
                       help="MLflow tracking URI (default: sqlite:///RESULTS/mlflow.db)")
    group.add_argument("--results", type=Path, default=Path("results"), metavar="RESULTS",
                       help="results folder holding the default MLflow database "
                            "(default: results)")
    group.add_argument("--experiment", metavar="NAME",
                       help=f"MLflow experiment (default: {experiment_default})")
    if run_name is not None:
        group.add_argument("--run-name", metavar="NAME", help=f"run name (default: {run_name})")
