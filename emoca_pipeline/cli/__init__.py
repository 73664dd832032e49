"""The ``emoca`` command: one subcommand per pipeline stage; Snakemake rules call these.

Each module of this package registers the subcommands of one stage. Errors a user can
cause (a missing file, a bad value) end the command with one line on stderr, naming the
file or argument, and exit status 2. Heavy imports (torch, Lightning, MLflow) happen when a
command runs, not while parsing.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
from collections.abc import Sequence

from emoca_pipeline.cli.common import add_command

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``emoca`` and all its subcommands."""
    from emoca_pipeline.cli import assets, data, download, emoca, emotion
    from emoca_pipeline.cli import evaluate as evaluate_cli
    from emoca_pipeline.cli import reconstruct as reconstruct_cli

    parser = argparse.ArgumentParser(
        prog="emoca",
        description="EMOCA 3D face reconstruction with emotion, as a batch pipeline.",
    )
    parser.add_argument("--log-level", default=os.environ.get("EMOCA_LOG_LEVEL", "INFO"),
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="logging level of the messages on stderr (default INFO, or "
                             "$EMOCA_LOG_LEVEL)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    assets.register(commands)
    data.register(commands)
    download.register(commands)
    train = add_command(commands, "train", "Train networks (EMOCA stages, emotion networks).")
    train_commands = train.add_subparsers(dest="train_command", metavar="NETWORK", required=True)
    emoca.register_train(train_commands)
    emotion.register_train(train_commands)
    predict = add_command(commands, "predict", "Run trained networks on a table of images "
                          "or codes.")
    emotion.register_predict(
        predict.add_subparsers(dest="predict_command", metavar="NETWORK", required=True))
    evaluate = add_command(commands, "eval", "Evaluation tables in the paper's format.")
    eval_commands = evaluate.add_subparsers(dest="eval_command", metavar="TABLE", required=True)
    emotion.register_eval(eval_commands)
    evaluate_cli.register_eval(eval_commands)
    emoca.register_import_checkpoint(commands)
    reconstruct_cli.register(commands)
    return parser


def configure_logging(level: str) -> None:
    """One stderr handler for the whole program: ``HH:MM:SS LEVEL logger: message``."""
    logging.basicConfig(
        level=getattr(logging, level), stream=sys.stderr, force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``emoca`` console script."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, KeyError, pickle.UnpicklingError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"emoca: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
