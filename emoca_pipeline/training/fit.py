"""The fit job every training job shares (EMOCA's stages, the emotion networks).

A job builds its settings, data module and Lightning module, then:

1. :func:`tracked_run` opens its MLflow child run (:mod:`emoca_pipeline.tracking`) with the
   job's tags and params, and ends it FINISHED, or FAILED when anything raises;
2. :func:`fit` trains with Lightning: checkpoints of the lowest ``val/loss`` in
   ``OUT/checkpoints`` (stale ``*.ckpt`` removed first), early stopping on ``val/loss``, one
   log line per validation (:class:`ValidationLog`), and the best weights loaded back into
   the module at the end;
3. the job saves its model and other outputs, and :func:`finish_job` writes
   ``OUT/training.json`` atomically and logs the files (and, with ``log_best_checkpoint``,
   the best Lightning checkpoint under its stem) as artifacts of the run.

:class:`FitSettings` are the settings of that loop; each job's settings extend them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from pydantic import Field, field_validator, model_validator
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint

from emoca_pipeline.io.atomic import atomic_write_text
from emoca_pipeline.tracking import (
    EmocaMLFlowLogger,
    job_run,
    log_artifact,
)
from emoca_pipeline.training.settings import SettingsModel

__all__ = ["FitResult", "FitSettings", "ValidationLog", "finish_job", "fit", "tracked_run",
           "trainer_precision"]

log = logging.getLogger(__name__)

#: The metric every job early-stops and checkpoints on.
MONITOR = "val/loss"


class FitSettings(SettingsModel):
    """Settings of the fit loop, shared by every training job.

    name: the model's name in MLflow (the run name) and in output files.
    seed: seed of weights, sampling and augmentation.
    max_epochs, min_epochs, max_steps: training length (max_steps = -1: no step limit).
    limit_train_batches, limit_val_batches: batches per epoch / per validation: a fraction
        (float <= 1) or a count (int).
    val_every_n_epochs: validate (and consider a checkpoint) every this many epochs.
    patience, min_delta: early stopping on the validation loss.
    checkpoint_every_n_epochs: consider saving the best checkpoint every n epochs only (a
        checkpoint is written whenever the validation loss improves).
    checkpoint_weights_only: checkpoints without optimiser state (a third of the size; no
        exact resume).
    log_best_checkpoint: also upload the best Lightning checkpoint to MLflow (the run
        always holds the job's model.pt and training.json).
    accelerator, devices, strategy, precision: Lightning Trainer settings ("cpu"/"gpu"/
        "auto", a count or "auto", "auto"/"ddp", e.g. "32-true" or "bf16-mixed").
        precision "auto": "bf16-mixed" on a GPU and on CPUs with native bf16 (AVX512-BF16 or
        AMX), else "32-true": without it, bf16 autocast is emulated and a ResNet-18
        training step at 64 px took 20x longer than in float32 (AMD EPYC, AVX2 only).
    num_workers: DataLoader worker processes.
    experiment: MLflow experiment name.
    """

    name: str = Field("model", pattern=r"^[^/\\\n]+$")
    seed: int = 0
    max_epochs: int = Field(100, ge=1)
    min_epochs: int = Field(1, ge=1)
    max_steps: int = -1
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    val_every_n_epochs: int = Field(1, ge=1)
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0.0)
    checkpoint_every_n_epochs: int = Field(1, ge=1)
    checkpoint_weights_only: bool = False
    log_best_checkpoint: bool = True
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = Field(0, ge=0)
    experiment: str = Field("emoca-pipeline", min_length=1)

    @field_validator("max_steps")
    @classmethod
    def _step_limit(cls, value: int) -> int:
        if value < -1 or value == 0:
            raise ValueError(f"must be -1 (no limit) or >= 1, got {value}")
        return value

    @field_validator("limit_train_batches", "limit_val_batches")
    @classmethod
    def _batch_limit(cls, value: int | float) -> int | float:
        if isinstance(value, float) and not 0.0 < value <= 1.0:
            raise ValueError(f"a fraction must lie in (0, 1], got {value}")
        if isinstance(value, int) and value < 1:
            raise ValueError(f"a count must be >= 1, got {value}")
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: int | str) -> int | str:
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"expected a count or 'auto', got {value!r}")
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _epochs(self) -> FitSettings:
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs ({self.min_epochs}) exceeds max_epochs "
                             f"({self.max_epochs})")
        return self


class ValidationLog(Callback):
    """One ``logging`` line per validation: epoch, step and the metrics ``keys`` that the
    module logged (e.g. ``val/loss``, ``val/accuracy``)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = ", ".join(f"{key} {float(metrics[key]):.4g}" for key in self.keys
                          if key in metrics)
        log.info("epoch %d step %d: %s", trainer.current_epoch, trainer.global_step, shown)


class FitResult(NamedTuple):
    """What :func:`fit` did.

    best_checkpoint: the Lightning checkpoint of the lowest validation loss (None when no
        validation ran); best_val_loss: its loss; val_metrics: the last validation's
        ``val/`` metrics; steps, epochs: where training ended; stopped_early: whether early
        stopping ended it.
    """

    best_checkpoint: Path | None
    best_val_loss: float | None
    val_metrics: dict[str, float]
    steps: int
    epochs: int
    stopped_early: bool


@contextlib.contextmanager
def tracked_run(
    settings: FitSettings,
    job: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    tracking_uri: str | None,
    results_dir: str | os.PathLike,
    parent_run_id: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
) -> Iterator[EmocaMLFlowLogger]:
    """The job's MLflow child run, with tag ``emoca.job=job``, ``tags`` and the (nested)
    ``params``; FINISHED when the block ends, FAILED when it raises.

    ``experiment`` and ``run_name`` default to the settings' ``experiment`` and ``name``;
    ``tracking_uri``, ``results_dir`` and ``parent_run_id`` are
    :func:`~emoca_pipeline.tracking.make_mlflow_logger`'s.
    """
    with job_run(tracking_uri, results_dir, experiment or settings.experiment,
                 run_name or settings.name, kind="training", params=params,
                 tags={"emoca.job": job, **tags}, parent_run_id=parent_run_id) as logger:
        yield logger


def trainer_precision(settings: FitSettings) -> str:
    """The Trainer's precision: ``settings.precision``, with "auto" resolved (see
    :class:`FitSettings`)."""
    if settings.precision != "auto":
        return settings.precision
    from emoca_pipeline.inference.reconstruct import cpu_default_precision

    if settings.accelerator == "cpu" or not torch.cuda.is_available():
        return "bf16-mixed" if cpu_default_precision() == "bf16" else "32-true"
    return "bf16-mixed"


def fit(
    module: pl.LightningModule,
    data: pl.LightningDataModule,
    settings: FitSettings,
    out_dir: str | os.PathLike,
    logger: EmocaMLFlowLogger,
    log_keys: Sequence[str] = (MONITOR,),
    log_every_n_steps: int = 1,
) -> FitResult:
    """Train ``module`` on ``data``; afterwards ``module`` holds the best weights.

    Args:
        module, data: the job's Lightning module (logs ``val/loss``) and data module.
        settings: the fit loop's settings.
        out_dir: the job's folder; checkpoints go to ``OUT/checkpoints``.
        logger: the run from :func:`tracked_run`.
        log_keys: metrics shown in the line logged after each validation.
        log_every_n_steps: how often Lightning logs training metrics.
    """
    out = Path(out_dir)
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for stale in checkpoints.glob("*.ckpt"):
        stale.unlink()
    checkpoint = ModelCheckpoint(
        dirpath=checkpoints, filename="epoch{epoch:03d}-step{step:06d}-val_loss{val/loss:.5f}",
        auto_insert_metric_name=False, monitor=MONITOR, mode="min", save_top_k=1,
        save_last=False,  # one file: a ResNet-50 checkpoint with Adam state is 280 MB
        every_n_epochs=settings.checkpoint_every_n_epochs,
        save_weights_only=settings.checkpoint_weights_only)
    # Checked after validations only: with the default, Lightning also checks at the end of
    # a training epoch, which fails when max_steps ends that epoch before its validation.
    stopping = EarlyStopping(monitor=MONITOR, mode="min", patience=settings.patience,
                             min_delta=settings.min_delta, check_on_train_epoch_end=False)
    trainer = pl.Trainer(
        accelerator=settings.accelerator, devices=settings.devices, strategy=settings.strategy,
        precision=trainer_precision(settings), max_epochs=settings.max_epochs,
        min_epochs=settings.min_epochs, max_steps=settings.max_steps,
        limit_train_batches=settings.limit_train_batches,
        limit_val_batches=settings.limit_val_batches,
        check_val_every_n_epoch=settings.val_every_n_epochs, logger=logger,
        callbacks=[checkpoint, stopping, ValidationLog(log_keys)], enable_progress_bar=False,
        num_sanity_val_steps=0, log_every_n_steps=log_every_n_steps, default_root_dir=out)
    with warnings.catch_warnings():
        # num_workers=0 is deliberate for in-memory codes and small demos.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # Frozen parts are in eval mode on purpose (EmocaModel.train keeps them there).
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        trainer.fit(module, datamodule=data)

    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    if best is not None:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    else:
        log.warning("no validation ran (max_steps reached first?): keeping the last weights")
    score = checkpoint.best_model_score
    return FitResult(
        best_checkpoint=best,
        best_val_loss=float(score) if score is not None else None,
        val_metrics={k: float(v) for k, v in trainer.callback_metrics.items()
                     if k.startswith("val/")},
        steps=trainer.global_step, epochs=trainer.current_epoch,
        stopped_early=bool(stopping.stopped_epoch))


def finish_job(logger: EmocaMLFlowLogger, out_dir: str | os.PathLike,
               summary: Mapping[str, Any], files: Sequence[Path], result: FitResult,
               settings: FitSettings) -> Path:
    """Write ``OUT/training.json`` (``summary`` plus the run ids and the fit's outcome) and
    log ``files``, training.json and, with ``settings.log_best_checkpoint``, the best
    checkpoint (under its stem) as artifacts of the run. Returns training.json's path."""
    best = result.best_checkpoint
    record = {
        **summary, "mlflow_run_id": logger.run_id, "mlflow_parent_run_id": logger.parent_run_id,
        "best_checkpoint": str(best) if best else None, "best_val_loss": result.best_val_loss,
        "val": result.val_metrics, "steps": result.steps, "epochs": result.epochs,
        "stopped_early": result.stopped_early,
    }
    path = Path(out_dir) / "training.json"
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    for file in (*files, path):
        log_artifact(logger, file)
    if settings.log_best_checkpoint and best is not None:
        log_artifact(logger, best, best.stem)
    return path
