"""``emoca train deca|coarse|detail`` and ``emoca import-checkpoint`` (wired in by the lead)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register_import_checkpoint", "register_train"]


def _train(args: argparse.Namespace) -> None:
    import torch

    from emoca_pipeline.training.emoca import train_emoca

    if args.threads:
        torch.set_num_threads(args.threads)
    result = train_emoca(args.stage, args.config, args.table, args.out,
                         tracking_uri=args.tracking_uri, results_dir=args.results,
                         init=args.init, assets=args.assets)
    print(f"wrote {result.model_path} (MLflow run {result.run_id}); "
          f"val loss {result.val_metrics.get('val/loss', float('nan')):.4f}")


def register_train(train_subparsers: argparse._SubParsersAction) -> None:
    """Add ``deca``, ``coarse`` and ``detail`` to the ``train`` group."""
    for stage in ("deca", "coarse", "detail"):
        parser = train_subparsers.add_parser(
            stage, help=f"Train the {stage} stage (deca: DECA's E_flame pre-training).",
            description=f"Train EMOCA's {stage} stage on a Parquet table; write OUT/model.pt, "
                        "OUT/training.json and OUT/checkpoints/, tracked in MLflow.")
        parser.add_argument("--config", required=True, type=Path, metavar="FILE")
        parser.add_argument("--table", required=True, type=Path, metavar="TABLE",
                            help="Parquet table with path, identity, split, landmarks")
        parser.add_argument("--out", required=True, type=Path, metavar="DIR")
        parser.add_argument("--tracking-uri", metavar="URI")
        parser.add_argument("--results", type=Path, default=Path("results"))
        parser.add_argument("--threads", type=int)
        parser.add_argument("--init", type=Path, metavar="MODEL",
                            help="start from this model.pt (replaces the config's init)")
        parser.add_argument("--assets", type=Path, metavar="DIR",
                            help="FLAME asset folder (replaces the config's assets)")
        parser.set_defaults(func=_train, stage=stage)


def _import(args: argparse.Namespace) -> None:
    from emoca_pipeline.models.checkpoint_import import import_checkpoint

    report = import_checkpoint(args.model_dir, args.out, assets=args.assets)
    print(f"wrote {report.out} from {report.source}: {len(report.missing)} missing, "
          f"{len(report.unexpected)} unexpected, {report.ignored} ignored keys")
    for key in report.missing:
        print(f"missing: {key}")
    for key in report.unexpected:
        print(f"unexpected: {key}")


def register_import_checkpoint(subparsers: argparse._SubParsersAction) -> None:
    """Add ``import-checkpoint MODEL_DIR OUT [--assets DIR]`` to the top-level commands."""
    parser = subparsers.add_parser(
        "import-checkpoint", help="Import a released EMOCA folder or DECA's deca_model.tar.")
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    parser.add_argument("out", type=Path, metavar="OUT")
    parser.add_argument("--assets", type=Path, metavar="DIR",
                        help="FLAME asset folder (required for deca_model.tar)")
    parser.set_defaults(func=_import)
