"""The ``emoca eval synthetic``, ``emoca eval now`` and ``emoca eval affectnet`` commands.

``register_eval(eval_subparsers)`` adds them to the ``eval`` group that
:mod:`emoca_pipeline.cli` creates (``emoca eval emotion`` comes from :mod:`.emotion`).

Every evaluation is an MLflow child run (:func:`tracked_evaluation`, the run layout of
:mod:`emoca_pipeline.tracking`: under the workflow's parent run when one is set), holding
the table's cells as metrics and its files as artifacts; the EmoMLPs an evaluation trains
are runs nested under it.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from emoca_pipeline.cli.common import add_command, add_mlflow_options, positive_int, set_threads

__all__ = ["add_tracking_options", "register_eval", "tracked_evaluation"]


def name_and_folder(text: str) -> tuple[str, Path]:
    """argparse type: ``NAME=DIR``."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, Path(folder)


def _named(pairs: list[tuple[str, Path]], option: str) -> dict[str, Path]:
    named: dict[str, Path] = {}
    for name, folder in pairs:
        if name in named:
            raise ValueError(f"{option}: the name {name!r} is given twice")
        named[name] = folder
    return named


def add_tracking_options(parser: argparse.ArgumentParser, run_name: str) -> None:
    """``--tracking-uri``, ``--results``, ``--experiment``, ``--run-name`` and ``--threads``
    of an evaluation command (``run_name``: the default run name, shown in the help)."""
    add_mlflow_options(parser, "emoca-pipeline", run_name)
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (default: torch's choice)")


def _experiment(args: argparse.Namespace) -> str:
    from emoca_pipeline.tracking import DEFAULT_EXPERIMENT

    return args.experiment or DEFAULT_EXPERIMENT


@contextlib.contextmanager
def tracked_evaluation(args: argparse.Namespace, job: str, run_name: str,
                       params: Mapping[str, Any]) -> Iterator[Any]:
    """The evaluation's MLflow child run (tags ``emoca.run_kind=evaluation``,
    ``emoca.job=job``; ``params`` logged), from the options of :func:`add_tracking_options`
    (``--run-name`` overrides ``run_name``); FINISHED when the block ends, FAILED when it
    raises. Log the result with :func:`log_evaluation`."""
    from emoca_pipeline.tracking import job_run

    with job_run(args.tracking_uri, args.results, _experiment(args), args.run_name or run_name,
                 kind="evaluation", params=params, tags={"emoca.job": job}) as run:
        yield run


def log_evaluation(run: Any, result: Any) -> None:
    """Log an evaluation result's ``metrics()`` and ``files()`` to its run."""
    from emoca_pipeline.tracking import log_artifact, log_metrics

    log_metrics(run, result.metrics())
    for path in result.files():
        log_artifact(run, path)


# ---------------------------------------------------------------------------------------


def _eval_synthetic(args: argparse.Namespace) -> None:
    from emoca_pipeline.evaluation.synthetic import evaluate_synthetic

    set_threads(args.threads)
    if args.emotion_config is None and not args.no_emotion:
        raise ValueError("--emotion-config: give the EmoMLP settings (e.g. "
                         "config/emotion_mlp.yaml), or --no-emotion to leave emotion out")
    reconstructions = _named(args.reconstructions, "--reconstructions")
    emotion_config = None if args.no_emotion else args.emotion_config
    params = {"reconstructions": {k: str(v) for k, v in reconstructions.items()},
              "table": str(args.table), "assets": str(args.assets), "out": str(args.out),
              "emotion_config": None if emotion_config is None else str(emotion_config)}
    with tracked_evaluation(args, "eval synthetic", "eval synthetic", params) as run:
        result = evaluate_synthetic(
            reconstructions, args.table, args.assets, args.out, emotion_config,
            tracking_uri=run.store_uri, results_dir=args.results, experiment=_experiment(args),
            parent_run_id=run.run_id)
        log_evaluation(run, result)
    print(result.tables.markdown.read_text(encoding="utf-8"), end="")
    print(f"wrote {result.tables.csv}, {result.tables.markdown.name}, "
          f"{result.tables.latex.name}, {result.json.name} and {result.plot.name} "
          f"(MLflow run {run.run_id})")


def _eval_now(args: argparse.Namespace) -> None:
    from emoca_pipeline.evaluation.now import (
        IMAGE_LISTS,
        evaluate_now,
        load_flame_for_now,
        read_image_list,
        write_now_predictions,
    )

    set_threads(args.threads)
    if args.predictions is None and (args.reconstructions is None or args.model is None):
        raise ValueError("--reconstructions and --model: give both, or --predictions")
    params = {"reconstructions": args.reconstructions, "model": args.model,
              "predictions": args.predictions, "now_root": str(args.now_root),
              "split": args.split, "out": str(args.out), "name": args.name,
              "allow_missing": args.allow_missing}
    with tracked_evaluation(args, "eval now", f"eval now {args.name}", params) as run:
        images = None
        predictions = args.predictions
        if predictions is None:
            listed = read_image_list(Path(args.now_root) / IMAGE_LISTS[args.split])
            flame = load_flame_for_now(args.model)
            predictions = args.out / "predictions"
            images = write_now_predictions(args.reconstructions, flame, listed, predictions,
                                           allow_missing=args.allow_missing)
        result = evaluate_now(predictions, args.now_root, args.out, split=args.split,
                              images=images, name=args.name)
        log_evaluation(run, result)
    print(result.tables.markdown.read_text(encoding="utf-8"), end="")
    print(f"wrote {result.tables.csv}, {result.tables.markdown.name}, "
          f"{result.tables.latex.name}, {result.json.name} and {result.plot.name} "
          f"(MLflow run {run.run_id})")


def _eval_affectnet(args: argparse.Namespace) -> None:
    from emoca_pipeline.evaluation.affectnet import evaluate_affectnet

    set_threads(args.threads)
    train, test = _named(args.train, "--train"), _named(args.test, "--test")
    params = {"train": {k: str(v) for k, v in train.items()},
              "test": {k: str(v) for k, v in test.items()},
              "emotion_config": str(args.emotion_config), "out": str(args.out)}
    with tracked_evaluation(args, "eval affectnet", "eval affectnet", params) as run:
        result = evaluate_affectnet(train, test, args.emotion_config, args.out,
                                    tracking_uri=run.store_uri, results_dir=args.results,
                                    experiment=_experiment(args), parent_run_id=run.run_id)
        log_evaluation(run, result)
    print(result.markdown.read_text(encoding="utf-8"), end="")
    print(f"wrote {result.csv}, {result.markdown.name}, {result.latex.name}, "
          f"{result.confusion_png.name} and {result.json.name} (MLflow run {run.run_id})")


def register_eval(eval_subparsers: argparse._SubParsersAction) -> None:
    """Add ``synthetic``, ``now`` and ``affectnet`` to the ``eval`` group."""
    parser = add_command(
        eval_subparsers, "synthetic", "Synthetic benchmark: geometry, landmarks, expression "
        "and emotion against the ground truth.",
        description=(
            "Compare reconstructions of the synthetic dataset with its ground truth on the\n"
            "test split (unseen identities): vertex error (FLAME units and mm), 68-point NME,\n"
            "expression correlation, jaw and head rotation error, and emotion recovered from\n"
            "the codes by an EmoMLP trained on the train split. Rows: each NAME, a mean-code\n"
            "baseline and the ground truth. Writes OUT/synthetic_table.{csv,md,tex,json},\n"
            "OUT/synthetic_metrics.png and OUT/emotion/."),
        func=_eval_synthetic)
    parser.add_argument("--reconstructions", required=True, nargs="+", type=name_and_folder,
                        metavar="NAME=DIR",
                        help="row name and 'emoca reconstruct' output folder (one or more)")
    parser.add_argument("--table", required=True, type=Path, metavar="PARQUET",
                        help="the synthetic dataset's synthetic.parquet")
    parser.add_argument("--assets", required=True, type=Path, metavar="FLAME_DIR",
                        help="the FLAME asset folder the dataset was rendered with")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--emotion-config", type=Path, metavar="YAML",
                        help="EmoMLP training settings (e.g. config/emotion_mlp.yaml)")
    parser.add_argument("--no-emotion", action="store_true",
                        help="leave the emotion columns out")
    add_tracking_options(parser, "eval synthetic")

    parser = add_command(
        eval_subparsers, "now", "NoW benchmark: scan-to-mesh errors of neutral reconstructions.",
        description=(
            "Write the predictions in the official layout (OUT/predictions/<subject>/\n"
            "<challenge>/<image>.obj and .npy, expression and pose zeroed) from a\n"
            "reconstruction folder, or take an existing prediction folder (--predictions);\n"
            "align each to its scan (7-landmark Procrustes with scale, then scan-to-mesh\n"
            "refinement) and measure the exact distance of every cropped scan vertex. Writes\n"
            "OUT/now_table.{csv,md,tex,json} (median, mean, std in mm; all and per challenge)\n"
            "and OUT/now_cumulative_error.png."),
        func=_eval_now)
    parser.add_argument("--reconstructions", type=Path, metavar="DIR",
                        help="'emoca reconstruct' output folder run on the NoW images")
    parser.add_argument("--model", type=Path, metavar="MODEL",
                        help="the EMOCA model.pt that made them (its FLAME), or a FLAME asset "
                             "folder")
    parser.add_argument("--predictions", type=Path, metavar="DIR",
                        help="evaluate this official-layout prediction folder instead")
    parser.add_argument("--now-root", required=True, type=Path, metavar="NOW_DIR",
                        help="the NoW dataset folder (image lists, scans/, scans_lmks_onlypp/)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--split", default="validation", choices=("validation", "test"),
                        help="image list to evaluate (default: validation)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="evaluate the images that have a reconstruction, count the rest")
    parser.add_argument("--name", default="EMOCA",
                        help="method name in the plot, the JSON and the run name "
                             "(default: EMOCA)")
    add_tracking_options(parser, "eval now NAME")

    parser = add_command(
        eval_subparsers, "affectnet", "AffectNet protocol: emotion recognised from "
        "reconstructed codes.",
        description=(
            "For each NAME: train an EmoMLP on the codes reconstructed from the AffectNet\n"
            "train manifest (--train NAME=DIR), predict the test manifest's (--test NAME=DIR)\n"
            "and write the paper-format emotion table, one row per model:\n"
            "OUT/affectnet_table.{csv,md,tex,json}, OUT/affectnet_confusion_matrices.png,\n"
            "OUT/codes/ and OUT/emomlp/. When --train and --test give a model the same\n"
            "folder (the whole manifest reconstructed once), its split column chooses the\n"
            "rows: train and val train, test tests."),
        func=_eval_affectnet)
    parser.add_argument("--train", required=True, nargs="+", type=name_and_folder,
                        metavar="NAME=DIR",
                        help="reconstructions of the train manifest (or of the whole one)")
    parser.add_argument("--test", required=True, nargs="+", type=name_and_folder,
                        metavar="NAME=DIR",
                        help="reconstructions of the test manifest (or of the whole one)")
    parser.add_argument("--emotion-config", required=True, type=Path, metavar="YAML",
                        help="EmoMLP training settings (e.g. config/emotion_mlp.yaml)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    add_tracking_options(parser, "eval affectnet")
