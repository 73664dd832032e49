"""Running a trained emotion network (``model.pt`` of ``emoca train emotion``) on a table.

:func:`predict_emotion` reads the table with the training's data module (same crops, same
code columns), runs the network batch by batch (:func:`predict_batches`) and writes the
predictions Parquet that ``emoca eval emotion`` reads
(:func:`~emoca_pipeline.evaluation.emotion_table.write_emotion_predictions`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from emoca_pipeline.evaluation.emotion_table import write_emotion_predictions
from emoca_pipeline.models.emotion import EmoMLP, EmotionImageNet, EmotionOutput, load_emotion_model
from emoca_pipeline.training.emotion_data import EmotionDataModule

__all__ = ["EmotionPredictions", "emotion_forward", "predict_batches", "predict_emotion",
           "write_predictions"]


class EmotionPredictions(NamedTuple):
    """Predictions for N rows of a data module.

    index: (N,) row numbers into the data module (see
        :meth:`~emoca_pipeline.training.emotion_data.EmotionDataModule.labels`).
    log_probs: (N, C) expression log-probabilities. valence, arousal: (N,).
    """

    index: np.ndarray
    log_probs: np.ndarray
    valence: np.ndarray
    arousal: np.ndarray


def emotion_forward(model: EmoMLP | EmotionImageNet, batch: Mapping[str, torch.Tensor]
                    ) -> EmotionOutput:
    """Run ``model`` on a batch of the data module: codes ``shape`` (B, 100), ``exp``
    (B, 50), ``jaw`` (B, 3) for an EmoMLP (the ones its settings use), ``image``
    (B, 3, S, S) for the image network."""
    if isinstance(model, EmoMLP):
        used = dict(model.settings.parts)
        return model(
            shape=batch["shape"] if "shape" in used else None,
            expression=batch["exp"] if "expression" in used else None,
            jaw=batch["jaw"] if "jaw" in used else None,
        )
    return model(batch["image"])


@torch.no_grad()
def predict_batches(model: EmoMLP | EmotionImageNet,
                    batches: Iterable[Mapping[str, torch.Tensor]]) -> EmotionPredictions:
    """Run ``model`` in eval mode over ``batches`` (with ``index``) on its device."""
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {name: [] for name in EmotionPredictions._fields}
    for batch in batches:
        batch = {name: value.to(device) for name, value in batch.items()}
        output = emotion_forward(model, batch)
        parts["index"].append(batch["index"].cpu().numpy())
        parts["log_probs"].append(output.expr_logits.float().cpu().numpy())
        parts["valence"].append(output.valence.float().cpu().numpy())
        parts["arousal"].append(output.arousal.float().cpu().numpy())
    return EmotionPredictions(*(np.concatenate(parts[name])
                                for name in EmotionPredictions._fields))


def write_predictions(path: str | os.PathLike, data: EmotionDataModule,
                      predictions: EmotionPredictions, model_name: str) -> Path:
    """Write ``predictions`` with their rows' keys, splits and labels (null where missing)
    as a predictions Parquet file (atomically)."""
    labels = data.labels(predictions.index)
    return write_emotion_predictions(
        Path(path), labels.keys.tolist(), model_name, predictions.log_probs,
        predictions.valence, predictions.arousal, expression=labels.expression,
        valence=labels.valence, arousal=labels.arousal, split=labels.splits.tolist(),
    )


def predict_emotion(
    model_path: str | os.PathLike,
    table: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "test",
    codes_table: str | os.PathLike | None = None,
    model_name: str | None = None,
    batch_size: int = 256,
    key_column: str = "image_id",
) -> Path:
    """Run a saved emotion network on the rows of ``table`` in ``split`` ("all": every row);
    write the predictions Parquet ``out`` (see :mod:`emoca_pipeline.evaluation.emotion_table`).

    The input kind (codes or images) is the one the network was trained on; codes come from
    ``table`` or from ``codes_table`` joined on ``key_column``. Labels are copied when the
    table has them (rows without valid labels are kept, their ground truth null).
    """
    model, spec = load_emotion_model(model_path)
    data = EmotionDataModule(
        table, spec["input"], eval_batch_size=batch_size,
        image_size=int(spec.get("image_size", 224)), codes_table=codes_table,
        key_column=key_column,
        mlp_settings=model.settings if isinstance(model, EmoMLP) else None,
        require_labels=False,
    )
    data.setup()
    predictions = predict_batches(model, data.dataloader(split))
    return write_predictions(out, data, predictions, model_name or spec["name"])
