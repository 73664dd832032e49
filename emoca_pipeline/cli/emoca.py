"""``emoca train deca|coarse|detail``, ``emoca train schema`` and ``emoca import-checkpoint``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emoca_pipeline.cli.common import add_command, add_mlflow_options, positive_int, set_threads

__all__ = ["register_import_checkpoint", "register_train"]

#: The settings model of each ``emoca train`` network (module, class).
SETTINGS_MODELS = {
    "deca": ("emoca_pipeline.training.emoca_settings", "EmocaTrainingSettings"),
    "coarse": ("emoca_pipeline.training.emoca_settings", "EmocaTrainingSettings"),
    "detail": ("emoca_pipeline.training.emoca_settings", "EmocaTrainingSettings"),
    "emotion": ("emoca_pipeline.training.emotion_settings", "EmotionTrainingSettings"),
}

_STAGE_HELP = {
    "deca": "Train DECA's coarse encoder E_flame (EMOCA's starting point).",
    "coarse": "Train EMOCA's coarse stage: E_expression, with E_flame frozen.",
    "detail": "Train the detail stage: E_detail and D_detail.",
}


def _train(args: argparse.Namespace) -> None:
    from emoca_pipeline.training.emoca_job import train_emoca

    set_threads(args.threads)
    result = train_emoca(args.stage, args.config, args.table, args.out,
                         tracking_uri=args.tracking_uri, results_dir=args.results,
                         init=args.init, assets=args.assets, experiment=args.experiment,
                         emotion_network=args.emotion_network, codes_table=args.codes)
    print(f"wrote {result.model_path} (MLflow run {result.run_id}); "
          f"val loss {result.val_metrics.get('val/loss', float('nan')):.4f}")


def _schema(args: argparse.Namespace) -> None:
    import importlib

    from emoca_pipeline.io.atomic import atomic_write_text
    from emoca_pipeline.training.settings import settings_json_schema

    module, name = SETTINGS_MODELS[args.network]
    schema = settings_json_schema(getattr(importlib.import_module(module), name))
    text = json.dumps(schema, indent=2) + "\n"
    if args.out is None:
        print(text, end="")
    else:
        atomic_write_text(args.out, text)


def register_train(train_subparsers: argparse._SubParsersAction) -> None:
    """Add ``deca``, ``coarse``, ``detail`` and ``schema`` to the ``train`` group."""
    for stage, help_text in _STAGE_HELP.items():
        parser = add_command(
            train_subparsers, stage, help_text,
            description=f"{help_text}\nOn a Parquet table; write OUT/model.pt (the best "
                        "weights),\nOUT/training.json and OUT/checkpoints/, tracked in MLflow.")
        parser.add_argument("--config", required=True, type=Path, metavar="FILE",
                            help=f"YAML stage settings (e.g. config/emoca_{stage}.yaml; "
                                 f"'emoca train schema {stage}' prints their JSON Schema)")
        parser.add_argument("--table", required=True, type=Path, metavar="TABLE",
                            help="a manifest folder of 'emoca manifest build' (crops from "
                                 "its crop_transform), or a Parquet table with path, "
                                 "identity, split, landmarks (e.g. synthetic.parquet)")
        parser.add_argument("--codes", type=Path, metavar="TABLE",
                            help="ground-truth codes (synthetic.parquet) joined on image_id "
                                 "when TABLE is a manifest: the synthetic-assist terms and "
                                 "the exp_error metric (replaces the config's codes_table)")
        parser.add_argument("--emotion-network", type=Path, metavar="MODEL",
                            help="frozen image emotion network of the emotion-consistency "
                                 "loss: a model.pt of 'emoca train emotion' (replaces the "
                                 "config's emotion_network)")
        parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                            help="output folder")
        parser.add_argument("--init", type=Path, metavar="MODEL",
                            help="start from this model.pt (replaces the config's init)")
        parser.add_argument("--assets", type=Path, metavar="DIR",
                            help="FLAME asset folder (replaces the config's assets)")
        add_mlflow_options(parser, "the config's 'experiment'")
        parser.add_argument("--threads", type=positive_int, metavar="N",
                            help="torch CPU threads (default: torch's choice)")
        parser.set_defaults(func=_train, stage=stage)

    parser = add_command(
        train_subparsers, "schema", "Print the JSON Schema of a training config.",
        description="Print the JSON Schema (draft 2020-12) of the YAML settings that 'emoca\n"
                    "train NETWORK --config FILE' reads, to check a config before a job runs\n"
                    "(types, bounds, defaults, unknown keys; cross-field rules are checked\n"
                    "when the job reads the file).")
    parser.add_argument("network", choices=tuple(SETTINGS_MODELS), metavar="NETWORK",
                        help=f"one of {', '.join(SETTINGS_MODELS)}")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="write the schema to FILE instead of stdout")
    parser.set_defaults(func=_schema)


def _import(args: argparse.Namespace) -> None:
    from emoca_pipeline.models.checkpoint_import import import_checkpoint

    report = import_checkpoint(args.model_dir, args.out, assets=args.assets)
    print(f"wrote {report.out} from {report.source}: {len(report.missing)} missing, "
          f"{len(report.unexpected)} unexpected, {report.ignored} ignored keys")
    for key in report.missing:
        print(f"missing: {key}")
    for key in report.unexpected:
        print(f"unexpected: {key}")
    for note in report.notes:
        print(f"note: {note}")


def register_import_checkpoint(subparsers: argparse._SubParsersAction) -> None:
    """Add ``import-checkpoint MODEL_DIR OUT [--assets DIR]`` to the top-level commands."""
    parser = add_command(
        subparsers, "import-checkpoint",
        "Import a released EMOCA folder or DECA's deca_model.tar as a model.pt.",
        description=(
            "Convert a released EMOCA model folder (cfg.yaml + detail/checkpoints/**/*.ckpt)\n"
            "or DECA's deca_model.tar into OUT, this pipeline's model.pt. Use OUT with\n"
            "'emoca reconstruct INPUT DIR --model OUT', or start training from it with\n"
            "'emoca train coarse|detail ... --init OUT' (or 'init: OUT' in the config).\n"
            "State-dict keys the model lacks or does not expect are listed."),
    )
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                        help="released EMOCA folder, or DECA's deca_model.tar")
    parser.add_argument("out", type=Path, metavar="OUT",
                        help="model.pt to write (for 'emoca reconstruct --model' and "
                             "'emoca train ... --init')")
    parser.add_argument("--assets", type=Path, metavar="DIR",
                        help="FLAME asset folder: required for deca_model.tar; for EMOCA it "
                             "adds uv_face_mask.png and the MediaPipe mesh indices of "
                             "mediapipe_landmark_embedding.npz")
    parser.set_defaults(func=_import)
