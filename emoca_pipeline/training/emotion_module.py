"""The emotion networks' Lightning module: the network, its loss, Adam, running metrics.

Validation logs ``val/loss`` (the batch losses averaged over samples; VA weights unshaken)
and, over the whole validation set, ``val/v_pcc``, ``val/v_ccc``, ``val/v_rmse``,
``val/v_sagr`` (and ``a_`` for arousal), ``val/accuracy`` and ``val/macro_f1``, with
torchmetrics (synchronised across processes). The float64 metrics of the offline tables
(:mod:`emoca_pipeline.evaluation.metrics`) are computed from the saved predictions; the
running CCC here uses the n - 1 variance, which differs from theirs by O(1/n).
"""

from __future__ import annotations

from collections.abc import Mapping

import pytorch_lightning as pl
import torch
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.regression import ConcordanceCorrCoef, MeanSquaredError, PearsonCorrCoef

from emoca_pipeline.inference.emotion import emotion_forward
from emoca_pipeline.losses.emotion import EmotionLoss, EmotionLossOutput
from emoca_pipeline.models.emotion import EmoMLP, EmotionImageNet, EmotionOutput

__all__ = ["EmotionModule", "SignAgreement"]


class SignAgreement(Metric):
    """SAGR: the fraction of samples whose prediction and target have the same sign
    (sign(0) = 0, as the original)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("agree", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.agree += (torch.sign(preds) == torch.sign(target)).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.agree / self.total


def _regression_metrics(prefix: str) -> MetricCollection:
    return MetricCollection({"pcc": PearsonCorrCoef(), "ccc": ConcordanceCorrCoef(),
                             "rmse": MeanSquaredError(squared=False), "sagr": SignAgreement()},
                            prefix=prefix)


class EmotionModule(pl.LightningModule):
    """An emotion network with its loss, optimiser and running validation metrics.

    Args:
        model: an :class:`EmoMLP` (batches with codes) or :class:`EmotionImageNet` (batches
            with ``image``).
        loss: the training loss (default: :class:`EmotionLoss` with the paper's settings).
        learning_rate: Adam's learning rate.
    """

    def __init__(
        self,
        model: EmoMLP | EmotionImageNet,
        loss: EmotionLoss | None = None,
        learning_rate: float = 1e-4,
    ) -> None:
        super().__init__()
        if not isinstance(model, EmoMLP | EmotionImageNet):
            raise ValueError(f"model: expected EmoMLP or EmotionImageNet, got {type(model)}")
        self.model = model
        self.loss = loss or EmotionLoss()
        self.learning_rate = learning_rate
        n_classes = (model.settings.n_expressions if isinstance(model, EmoMLP)
                     else model.n_expressions)
        self.val_loss = MeanMetric()
        self.val_valence = _regression_metrics("val/v_")
        self.val_arousal = _regression_metrics("val/a_")
        self.val_expression = MetricCollection({
            "accuracy": MulticlassAccuracy(n_classes, average="micro", ignore_index=-1),
            "macro_f1": MulticlassF1Score(n_classes, average="macro", ignore_index=-1),
        }, prefix="val/")

    def forward(self, batch: Mapping[str, torch.Tensor]) -> EmotionOutput:
        """A batch dict (codes or ``image`` (B, 3, S, S)) -> EmotionOutput for B samples."""
        return emotion_forward(self.model, batch)

    def _loss(self, output: EmotionOutput, batch: Mapping[str, torch.Tensor]
              ) -> EmotionLossOutput:
        return self.loss(output, batch["expression"], batch["valence"], batch["arousal"])

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        output = self(batch)
        loss = self._loss(output, batch)
        size = int(batch["expression"].shape[0])
        self.log("train/loss", loss.total, on_step=True, on_epoch=True, batch_size=size)
        self.log_dict({f"train/{name}": value for name, value in loss.terms.items()},
                      on_step=True, on_epoch=False, batch_size=size)
        return loss.total

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        output = self(batch)
        size = int(batch["expression"].shape[0])
        if size >= 2:  # batch PCC/CCC need two samples; a lone last sample adds no loss
            self.val_loss.update(self._loss(output, batch).total.detach().float(), size)
        self.val_valence.update(output.valence.float(), batch["valence"].float())
        self.val_arousal.update(output.arousal.float(), batch["arousal"].float())
        self.val_expression.update(output.expr_logits.float(), batch["expression"])

    def on_validation_epoch_end(self) -> None:
        metrics = {"val/loss": self.val_loss.compute(), **self.val_valence.compute(),
                   **self.val_arousal.compute(), **self.val_expression.compute()}
        self.log_dict(metrics)
        for metric in (self.val_loss, self.val_valence, self.val_arousal, self.val_expression):
            metric.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.learning_rate)
