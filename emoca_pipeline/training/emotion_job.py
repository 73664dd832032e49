"""One emotion-network training job (``emoca train emotion``).

:func:`train_emotion` reads the settings (:mod:`.emotion_settings`), the labelled table
(:class:`~emoca_pipeline.training.emotion_data.EmotionDataModule`), trains the network
(:class:`~emoca_pipeline.training.emotion_module.EmotionModule`) through the shared fit job
(:mod:`emoca_pipeline.training.fit`: early stopping on ``val/loss``, checkpoints in
``OUT/checkpoints``, an MLflow child run) and writes ``OUT/model.pt`` (the best weights and
what is needed to rebuild the network,
:func:`~emoca_pipeline.models.emotion.save_emotion_model`), ``OUT/predictions.parquet`` (the
test split) and ``OUT/training.json`` (a summary).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch

from emoca_pipeline.data.schema import SPLITS
from emoca_pipeline.evaluation.metrics import ClassificationAccumulator, regression_metrics
from emoca_pipeline.inference.emotion import (
    EmotionPredictions,
    predict_batches,
    write_predictions,
)
from emoca_pipeline.losses.emotion import EmotionLoss
from emoca_pipeline.models.emotion import INPUT_KINDS, build_emotion_model, save_emotion_model
from emoca_pipeline.tracking import input_tags
from emoca_pipeline.training.emotion_data import EmotionDataModule, InputKind
from emoca_pipeline.training.emotion_module import EmotionModule
from emoca_pipeline.training.emotion_settings import load_emotion_settings
from emoca_pipeline.training.fit import finish_job, fit, tracked_run

__all__ = ["EmotionTrainingResult", "split_metrics", "train_emotion"]

#: Metrics in the line logged after each validation.
LOG_KEYS = ("val/loss", "val/accuracy", "val/v_ccc", "val/a_ccc")


class EmotionTrainingResult(NamedTuple):
    """What :func:`train_emotion` wrote.

    model_path: ``<out>/model.pt``; predictions_path: ``<out>/predictions.parquet`` (test
    split); summary_path: ``<out>/training.json``; best_checkpoint: the Lightning checkpoint
    of the lowest validation loss; run_id: the MLflow run; test_metrics: whole-test-split
    metrics (keys as the ``val/`` metrics: v_pcc ... accuracy, macro_f1).
    """

    model_path: Path
    predictions_path: Path
    summary_path: Path
    best_checkpoint: Path | None
    run_id: str
    test_metrics: dict[str, float]


def split_metrics(data: EmotionDataModule, predictions: EmotionPredictions) -> dict[str, float]:
    """Whole-set float64 metrics of ``predictions`` (rows with labels, e.g. the test split)
    against the data module's labels."""
    labels = data.labels(predictions.index)
    v = regression_metrics(predictions.valence, labels.valence)
    a = regression_metrics(predictions.arousal, labels.arousal)
    classes = ClassificationAccumulator(predictions.log_probs.shape[1])
    classes.update(predictions.log_probs, labels.expression.astype(np.int64))
    e = classes.compute()
    return {"v_pcc": v.pcc, "v_ccc": v.ccc, "v_rmse": v.rmse, "v_sagr": v.sagr,
            "a_pcc": a.pcc, "a_ccc": a.ccc, "a_rmse": a.rmse, "a_sagr": a.sagr,
            "accuracy": e.accuracy, "macro_f1": e.macro_f1}


def train_emotion(
    config_file: str | os.PathLike,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    input: InputKind,
    codes_table: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    results_dir: str | os.PathLike = "results",
    experiment: str | None = None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> EmotionTrainingResult:
    """Train an emotion network on the train split, early-stopped on the val split.

    Args:
        config_file: YAML settings
            (:class:`~emoca_pipeline.training.emotion_settings.EmotionTrainingSettings`).
        manifest: labelled Parquet table (see :class:`EmotionDataModule`).
        out_dir: folder for ``model.pt``, ``predictions.parquet``, ``training.json`` and
            ``checkpoints/`` (stale ``*.ckpt`` files there are removed first).
        input: "codes" (EmoMLP) or "images" (ResNet-50 network).
        codes_table: codes joined on ``image_id`` instead of the manifest's own.
        tracking_uri: MLflow URI; default ``sqlite:///<results_dir>/mlflow.db``.
        results_dir: the workflow's results folder (MLflow defaults only).
        experiment, run_name: default: the config's ``experiment`` and ``name``.
        parent_run_id: parent MLflow run (default: ``$EMOCA_MLFLOW_PARENT_RUN`` or on demand).
    """
    started = time.perf_counter()
    settings = load_emotion_settings(config_file)
    if input not in INPUT_KINDS:
        raise ValueError(f"input: expected 'codes' or 'images', got {input!r}")
    out = Path(out_dir)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    data = EmotionDataModule(
        manifest, input, batch_size=settings.batch_size,
        eval_batch_size=settings.eval_batch_size, balanced_sampling=settings.balanced_sampling,
        num_workers=settings.num_workers, image_size=settings.image.image_size,
        codes_table=codes_table, mlp_settings=settings.mlp, seed=settings.seed,
    )
    data.setup()
    sizes = data.split_sizes()
    for split in SPLITS:
        if sizes[split] < 2:
            raise ValueError(f"{manifest}: split {split!r} has {sizes[split]} usable row(s); "
                             "training needs train, val and test rows (>= 2 each)")
    model = build_emotion_model(input, settings.mlp, settings.image.weights,
                                settings.image.input_normalization, settings.image.backbone)
    loss = EmotionLoss(settings.va_loss, settings.expression_weight,
                       generator=torch.Generator().manual_seed(settings.seed))
    module = EmotionModule(model, loss, settings.learning_rate)
    name = run_name or settings.name
    params = {"input": input, "manifest": str(Path(manifest).resolve()),
              "codes_table": str(codes_table) if codes_table else None,
              **settings.model_dump(), "data": sizes}
    batches = max(1, sizes["train"] // settings.batch_size)
    limit = settings.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else max(1, int(batches * limit))
    with tracked_run(settings, "train_emotion", params,
                     {"emoca.input": input, **input_tags(manifest=manifest, codes=codes_table)},
                     tracking_uri, results_dir, parent_run_id, experiment, name) as logger:
        result = fit(module, data, settings, out, logger, LOG_KEYS,
                     log_every_n_steps=min(50, batches))
        model_path = save_emotion_model(out / "model.pt", module.model, name,
                                        settings.image.image_size)
        predictions = predict_batches(module.model, data.dataloader("test"))
        predictions_path = write_predictions(out / "predictions.parquet", data, predictions,
                                             name)
        test = split_metrics(data, predictions)
        logger.log_metrics({f"test/{key}": value for key, value in test.items()},
                           step=result.steps)
        summary = {"name": name, "input": input, "data": sizes, "test": test,
                   "seconds": round(time.perf_counter() - started, 2)}
        summary_path = finish_job(logger, out, summary, [model_path, predictions_path],
                                  result, settings)
    return EmotionTrainingResult(model_path, predictions_path, summary_path,
                                 result.best_checkpoint, logger.run_id, test)
