"""The ``emoca train emotion``, ``emoca predict emotion`` and ``emoca eval emotion`` commands.

The top-level ``emoca`` parser owns the ``train``, ``predict`` and ``eval`` groups (EMOCA's
``train deca|coarse|detail`` join the same ``train`` group); this module adds its
sub-subcommands to them::

    train = commands.add_parser("train", ...).add_subparsers(dest="train_command", ...)
    register_train(train)      # adds "emotion"
    register_predict(predict)  # adds "emotion"
    register_eval(evaluate)    # adds "emotion"

User errors surface as ValueError / FileNotFoundError with one line naming the file.
Heavy imports (torch, Lightning, MLflow) happen when a command runs, not when parsing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emoca_pipeline.cli.common import add_command, add_mlflow_options, positive_int, set_threads
from emoca_pipeline.cli.evaluate import add_tracking_options

__all__ = ["register_eval", "register_predict", "register_train"]


# ---------------------------------------------------------------------------------------
# train emotion


def _train_emotion(args: argparse.Namespace) -> None:
    from emoca_pipeline.training.emotion_job import train_emotion

    set_threads(args.threads)
    result = train_emotion(
        args.config, args.manifest, args.out, args.input, codes_table=args.codes,
        tracking_uri=args.tracking_uri, results_dir=args.results, experiment=args.experiment,
        run_name=args.name,
    )
    metrics = result.test_metrics
    print(f"wrote {result.model_path} and {result.predictions_path} (MLflow run "
          f"{result.run_id}); test accuracy {metrics['accuracy']:.3f}, "
          f"valence CCC {metrics['v_ccc']:.3f}, arousal CCC {metrics['a_ccc']:.3f}")


def register_train(train_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``emotion`` to the ``train`` group; returns its parser."""
    parser = add_command(
        train_subparsers, "emotion", "Train an emotion network (EmoMLP on codes or ResNet-50 "
        "on images).",
        description=(
            "Train an emotion network on a labelled Parquet table's train split, with early\n"
            "stopping on its val split; write OUT/model.pt, OUT/predictions.parquet (test split),\n"
            "OUT/training.json and OUT/checkpoints/, and track the run in MLflow."),
    )
    parser.add_argument("--input", required=True, choices=("codes", "images"),
                        help="codes: EmoMLP on FLAME shape/exp/jaw; images: ResNet-50 on crops")
    parser.add_argument("--config", required=True, type=Path, metavar="FILE",
                        help="YAML training settings (e.g. config/emotion_mlp.yaml; "
                             "'emoca train schema emotion' prints their JSON Schema)")
    parser.add_argument("--manifest", required=True, type=Path, metavar="TABLE",
                        help="labelled Parquet table (file or folder) with a split column")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="output folder")
    parser.add_argument("--codes", type=Path, metavar="TABLE",
                        help="Parquet of codes (shape, exp, pose) joined on image_id, instead "
                             "of the manifest's own (--input codes)")
    add_mlflow_options(parser, "the config's 'experiment'")
    parser.add_argument("--name", metavar="NAME",
                        help="model and run name (default: the config's 'name')")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=_train_emotion)
    return parser


# ---------------------------------------------------------------------------------------
# predict emotion


def _predict_emotion(args: argparse.Namespace) -> None:
    from emoca_pipeline.inference.emotion import predict_emotion

    set_threads(args.threads)
    path = predict_emotion(args.model, args.manifest, args.out, split=args.split,
                           codes_table=args.codes, model_name=args.name,
                           batch_size=args.batch_size)
    print(f"wrote {path}")


def register_predict(predict_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``emotion`` to the ``predict`` group; returns its parser."""
    parser = add_command(
        predict_subparsers, "emotion", "Run a trained emotion network on a Parquet table.",
        description=
        "Run a model.pt written by 'emoca train emotion' on the rows of TABLE in one split\n"
        "and write a predictions Parquet file for 'emoca eval emotion'.",
    )
    parser.add_argument("--model", required=True, type=Path, metavar="MODEL_PT",
                        help="model.pt from 'emoca train emotion'")
    parser.add_argument("--manifest", required=True, type=Path, metavar="TABLE",
                        help="Parquet table (file or folder) with image_id and the inputs")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="predictions Parquet file to write")
    parser.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                        help="rows to run on (default: test)")
    parser.add_argument("--codes", type=Path, metavar="TABLE",
                        help="Parquet of codes joined on image_id (EmoMLP only)")
    parser.add_argument("--name", metavar="NAME",
                        help="model name in the predictions (default: the trained name)")
    parser.add_argument("--batch-size", type=positive_int, default=256, metavar="N",
                        help="inference batch size (default: 256)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=_predict_emotion)
    return parser


# ---------------------------------------------------------------------------------------
# eval emotion


def _eval_emotion(args: argparse.Namespace) -> None:
    from emoca_pipeline.cli.evaluate import log_evaluation, tracked_evaluation
    from emoca_pipeline.evaluation.emotion_table import evaluate_emotion

    set_threads(args.threads)
    params = {"predictions": " ".join(str(path) for path in args.predictions),
              "out": str(args.out)}
    with tracked_evaluation(args, "eval emotion", "eval emotion", params) as run:
        result = evaluate_emotion(args.predictions, args.out)
        log_evaluation(run, result)
    print(result.markdown.read_text(encoding="utf-8"), end="")
    print(f"wrote {result.csv}, {result.markdown.name}, {result.latex.name}, "
          f"{result.confusion_png.name} and {result.json.name} (MLflow run {run.run_id})")


def register_eval(eval_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``emotion`` to the ``eval`` group; returns its parser."""
    parser = add_command(
        eval_subparsers, "emotion", "Emotion table (V/A PCC, CCC, RMSE, SAGR; accuracy, F1).",
        description=
        "Compare the models in predictions files on one test split: write OUT/emotion_table\n"
        ".csv/.md/.tex (rows = models; columns V-PCC V-CCC V-RMSE V-SAGR A-PCC A-CCC A-RMSE\n"
        "A-SAGR E-ACC E-F1), OUT/confusion_matrices.png and OUT/emotion_metrics.json;\n"
        "the table's cells and files go to an MLflow run.",
    )
    parser.add_argument("--predictions", required=True, nargs="+", type=Path,
                        metavar="PREDICTIONS", help="predictions Parquet files (one or more)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="output folder")
    add_tracking_options(parser, "eval emotion")
    parser.set_defaults(func=_eval_emotion)
    return parser
