"""Losses for training the emotion networks: the "shake" valence/arousal loss and the
expression NLL, plus class-balanced sampling weights.

What the original EMOCA code does (``gdl/models/EmotionRecognitionModuleBase.py``:
``v_or_a_loss``, ``va_loss``, ``_get_step_loss_weights``; the EmoMLP config
``gdl_apps/EmotionRecognition/training/emoca_coarse.yaml``; ``PCC_torch``/``CCC_torch`` in
``gdl/utils/emotion_metrics.py``) and what is matched here:

* The paper's EmoMLP trains with ``v_loss: {v_mse: 1}``, ``a_loss: {a_mse: 1}``,
  ``va_loss: {va_lpcc: 1, va_lccc: 1}``, ``va_loss_scheme: shake``, ``exp_loss: nll_loss``,
  where ``va_lpcc = 1 - (PCC_v + PCC_a) / 2`` and ``va_lccc = 1 - (CCC_v + CCC_a) / 2``.
  That 4-term set is :data:`ORIGINAL_VA_LOSS_WEIGHTS`, the default. Separate per-dimension
  terms ``v_lpcc = 1 - PCC_v`` etc. are available too (six-term variant:
  :data:`SIX_TERM_VA_LOSS_WEIGHTS`).
* "shake" (training only): every step each VA term gets a fresh weight drawn from U(0, 1)
  (the configured values are ignored, as in the original), and the weights are normalised
  to sum to 1. The original drew them with ``np.random.rand``; here ``torch.rand`` with an
  optional generator, so runs can be seeded.
* Outside training the original used the configured weights unnormalised (a sum of 4 for
  the paper's config, while training weights sum to 1). Here they are normalised to sum to
  1, so validation and training losses are on the same scale (the expected shaken weights
  are 1/K each); for equal configured weights this changes the validation loss by a
  constant factor only, so early stopping picks the same epoch.
* Batch PCC/CCC follow the original's ``CCC_torch``: Bessel-corrected (n - 1) variances and
  covariance, CCC = 2 cov / (var_x + var_y + (m_x - m_y)^2). A small ``eps`` keeps PCC's
  gradient finite for a constant batch, where the original returned nan.
* The expression loss is ``F.nll_loss`` on log-softmax outputs, unweighted
  (``expression_balancing: false``): class balance comes from the sampler, whose per-sample
  weights are 1 / (count of the sample's class), as in the original's
  ``make_class_balanced_sampler``.

These batch statistics are training objectives; evaluation numbers over a whole set come
from :mod:`emoca_pipeline.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emoca_pipeline.models.emotion import EmotionOutput

__all__ = [
    "ORIGINAL_VA_LOSS_WEIGHTS",
    "SIX_TERM_VA_LOSS_WEIGHTS",
    "VA_LOSS_TERMS",
    "EmotionLoss",
    "EmotionLossOutput",
    "VALoss",
    "VALossOutput",
    "VALossSettings",
    "batch_ccc",
    "batch_pcc",
    "class_balanced_weights",
    "expression_nll",
]

#: Every VA loss term this module knows. ``v``/``a``: valence/arousal; ``lpcc`` = 1 - PCC,
#: ``lccc`` = 1 - CCC; the ``va_`` terms average the valence and arousal correlations.
VA_LOSS_TERMS: tuple[str, ...] = (
    "v_mse",
    "a_mse",
    "v_lpcc",
    "a_lpcc",
    "v_lccc",
    "a_lccc",
    "va_lpcc",
    "va_lccc",
)

#: The paper's EmoMLP configuration (emoca_coarse.yaml).
ORIGINAL_VA_LOSS_WEIGHTS: dict[str, float] = {
    "v_mse": 1.0,
    "a_mse": 1.0,
    "va_lpcc": 1.0,
    "va_lccc": 1.0,
}

#: MSE, 1 - PCC and 1 - CCC separately for valence and arousal.
SIX_TERM_VA_LOSS_WEIGHTS: dict[str, float] = {
    "v_mse": 1.0,
    "a_mse": 1.0,
    "v_lpcc": 1.0,
    "a_lpcc": 1.0,
    "v_lccc": 1.0,
    "a_lccc": 1.0,
}


# ---------------------------------------------------------------------------------------
# Differentiable batch statistics


def _pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) or (N, 1) tensors with N >= 2 -> two (N,) tensors."""
    flat = []
    for name, values in (("pred", pred), ("target", target)):
        if not isinstance(values, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(values).__name__}")
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise ValueError(f"{name}: expected shape (N,) or (N, 1), got {tuple(values.shape)}")
        flat.append(values)
    x, y = flat
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"pred and target differ in length: {x.shape[0]} vs {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"batch correlation needs at least 2 samples, got {x.shape[0]}")
    return x, y.to(x.dtype)


def _batch_moments(
    x: torch.Tensor, y: torch.Tensor, unbiased: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Means, variances and covariance of a batch: (m_x, m_y, v_x, v_y, cov), all scalars."""
    dof = x.shape[0] - 1 if unbiased else x.shape[0]
    mean_x = x.mean()
    mean_y = y.mean()
    dx = x - mean_x
    dy = y - mean_y
    return mean_x, mean_y, (dx * dx).sum() / dof, (dy * dy).sum() / dof, (dx * dy).sum() / dof


def batch_pcc(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Differentiable Pearson correlation of a batch.

    pred, target: (N,) or (N, 1) with N >= 2. Returns a scalar tensor;
    cov / sqrt((var_x + eps)(var_y + eps)), so a constant batch gives 0 with a finite
    gradient instead of nan.
    """
    x, y = _pair(pred, target)
    _, _, var_x, var_y, cov = _batch_moments(x, y, unbiased=True)
    return cov / torch.sqrt((var_x + eps) * (var_y + eps))


def batch_ccc(
    pred: torch.Tensor, target: torch.Tensor, unbiased: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Differentiable concordance correlation of a batch.

    pred, target: (N,) or (N, 1) with N >= 2. Returns a scalar tensor
    2 cov / (var_x + var_y + (m_x - m_y)^2 + eps), with (n - 1) moments when ``unbiased``
    (as the original training code) or population moments otherwise.
    """
    x, y = _pair(pred, target)
    mean_x, mean_y, var_x, var_y, cov = _batch_moments(x, y, unbiased=unbiased)
    return 2.0 * cov / (var_x + var_y + (mean_x - mean_y) ** 2 + eps)


# ---------------------------------------------------------------------------------------
# Valence / arousal loss


@dataclass
class VALossSettings:
    """Which VA terms to use and how to weight them.

    weights: term name (see :data:`VA_LOSS_TERMS`) -> weight; terms with weight 0 are left
        out. Default: the paper's 4-term set.
    scheme: ``"shake"`` — fresh U(0, 1) weights, normalised to sum 1, every training step;
        the configured weights, normalised, outside training. ``"norm"`` — the configured
        weights normalised to sum 1. ``"fixed"`` — the configured weights as given.
    eps: stabiliser of the batch PCC/CCC denominators.
    """

    weights: Mapping[str, float] = field(default_factory=lambda: dict(ORIGINAL_VA_LOSS_WEIGHTS))
    scheme: Literal["shake", "norm", "fixed"] = "shake"
    eps: float = 1e-8

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(VA_LOSS_TERMS))
        if unknown:
            raise ValueError(
                f"VALossSettings.weights: unknown term(s) {unknown}; known: {list(VA_LOSS_TERMS)}"
            )
        for name, weight in self.weights.items():
            if not np.isfinite(weight) or weight < 0:
                raise ValueError(
                    f"VALossSettings.weights[{name!r}]: must be finite and >= 0, got {weight}"
                )
        if not any(weight > 0 for weight in self.weights.values()):
            raise ValueError("VALossSettings.weights: at least one term needs a weight > 0")
        if self.scheme not in ("shake", "norm", "fixed"):
            raise ValueError(
                f"VALossSettings.scheme: expected 'shake', 'norm' or 'fixed', got {self.scheme!r}"
            )
        self.weights = {name: float(w) for name, w in self.weights.items() if w > 0}


class VALossOutput(NamedTuple):
    """total: scalar tensor, the weighted sum of the terms.
    terms: term name -> unweighted scalar tensor (e.g. ``va_lccc`` = 1 - mean CCC).
    weights: term name -> the weight used this step.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    weights: dict[str, float]


class VALoss(nn.Module):
    """Valence/arousal loss with the original's "shake" weighting.

    Whether a step shakes follows ``self.training`` (so ``.train()``/``.eval()`` on the
    enclosing model switch it). ``generator``: optional CPU ``torch.Generator`` for the
    shaken weights.

    forward(valence, arousal, valence_target, arousal_target): each (N,) or (N, 1), N >= 2.
    """

    def __init__(
        self, settings: VALossSettings | None = None, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.settings = settings or VALossSettings()
        self.generator = generator

    def step_weights(self) -> dict[str, float]:
        """The term weights for one step (drawn afresh when shaking in training mode)."""
        names = list(self.settings.weights)
        if self.settings.scheme == "shake" and self.training:
            drawn = torch.rand(len(names), generator=self.generator, dtype=torch.float64)
            values = (drawn / drawn.sum()).tolist()
        elif self.settings.scheme == "fixed":
            values = [self.settings.weights[name] for name in names]
        else:  # "norm", and "shake" outside training
            total = sum(self.settings.weights.values())
            values = [self.settings.weights[name] / total for name in names]
        return dict(zip(names, values, strict=True))

    def forward(
        self,
        valence: torch.Tensor,
        arousal: torch.Tensor,
        valence_target: torch.Tensor,
        arousal_target: torch.Tensor,
    ) -> VALossOutput:
        v, v_gt = _pair(valence, valence_target)
        a, a_gt = _pair(arousal, arousal_target)
        if v.shape[0] != a.shape[0]:
            raise ValueError(f"valence and arousal differ in length: {v.shape[0]} vs {a.shape[0]}")
        wanted = set(self.settings.weights)
        eps = self.settings.eps
        correlations: dict[str, torch.Tensor] = {}
        if wanted & {"v_lpcc", "a_lpcc", "va_lpcc"}:
            correlations["v_pcc"] = batch_pcc(v, v_gt, eps)
            correlations["a_pcc"] = batch_pcc(a, a_gt, eps)
        if wanted & {"v_lccc", "a_lccc", "va_lccc"}:
            correlations["v_ccc"] = batch_ccc(v, v_gt, eps=eps)
            correlations["a_ccc"] = batch_ccc(a, a_gt, eps=eps)
        makers = {
            "v_mse": lambda: F.mse_loss(v, v_gt),
            "a_mse": lambda: F.mse_loss(a, a_gt),
            "v_lpcc": lambda: 1.0 - correlations["v_pcc"],
            "a_lpcc": lambda: 1.0 - correlations["a_pcc"],
            "v_lccc": lambda: 1.0 - correlations["v_ccc"],
            "a_lccc": lambda: 1.0 - correlations["a_ccc"],
            "va_lpcc": lambda: 1.0 - 0.5 * (correlations["v_pcc"] + correlations["a_pcc"]),
            "va_lccc": lambda: 1.0 - 0.5 * (correlations["v_ccc"] + correlations["a_ccc"]),
        }
        terms = {name: makers[name]() for name in self.settings.weights}
        weights = self.step_weights()
        total = torch.stack([weights[name] * value for name, value in terms.items()]).sum()
        return VALossOutput(total, terms, weights)


# ---------------------------------------------------------------------------------------
# Expression loss and sampling


def expression_nll(
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Negative log-likelihood of the true expression class.

    log_probs: (N, C) log-softmax outputs (as in :class:`EmotionOutput.expr_logits`);
    raw logits are rejected, since NLL on them would silently be wrong.
    labels: (N,) int64 in 0..C-1. class_weights: optional (C,) per-class weights.
    Returns a scalar tensor (weighted mean, as ``F.nll_loss``).
    """
    if log_probs.ndim != 2:
        raise ValueError(f"log_probs: expected shape (N, C), got {tuple(log_probs.shape)}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != log_probs.shape[0]:
        raise ValueError(
            f"labels: expected shape ({log_probs.shape[0]},), got {tuple(labels.shape)}"
        )
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels: expected integer class labels, got dtype {labels.dtype}")
    n_classes = log_probs.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels: values must lie in 0..{n_classes - 1}")
    with torch.no_grad():
        normaliser = torch.logsumexp(log_probs.float(), dim=1).abs().max()
    if log_probs.shape[0] and float(normaliser) > 1e-3:
        raise ValueError("log_probs: rows are not log-softmax normalised (logsumexp != 0); "
                         "apply F.log_softmax first")
    if class_weights is not None and class_weights.shape != (n_classes,):
        raise ValueError(
            f"class_weights: expected shape ({n_classes},), got {tuple(class_weights.shape)}"
        )
    return F.nll_loss(log_probs, labels.long(), weight=class_weights)


def class_balanced_weights(
    labels: Sequence[int] | np.ndarray | torch.Tensor, n_classes: int
) -> torch.Tensor:
    """Per-sample weights 1 / (count of the sample's class), for WeightedRandomSampler.

    Every class present then has the same total weight, so a sampler drawing with these
    weights sees classes uniformly. labels: (N,) ints in 0..n_classes-1, N >= 1.
    Returns (N,) float64.
    """
    array: Any = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels
    array = np.asarray(array)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels: expected a non-empty (N,) array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels: expected integer class labels, got dtype {array.dtype}")
    if n_classes < 1:
        raise ValueError(f"n_classes: must be >= 1, got {n_classes}")
    if array.min() < 0 or array.max() >= n_classes:
        raise ValueError(f"labels: values must lie in 0..{n_classes - 1}")
    counts = np.bincount(array, minlength=n_classes)
    return torch.from_numpy(1.0 / counts[array].astype(np.float64))


# ---------------------------------------------------------------------------------------
# Combined loss


class EmotionLossOutput(NamedTuple):
    """total: scalar tensor; terms: name -> unweighted scalar tensor (VA terms and
    ``expr_nll``); va_weights: the VA term weights used this step."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    va_weights: dict[str, float]


class EmotionLoss(nn.Module):
    """The emotion networks' training loss: VA loss + expression_weight * expression NLL.

    forward(prediction, expression, valence, arousal): prediction is an
    :class:`EmotionOutput` for N >= 2 samples; expression (N,) int64, valence and arousal
    (N,) targets.
    """

    def __init__(
        self,
        va_settings: VALossSettings | None = None,
        expression_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not np.isfinite(expression_weight) or expression_weight < 0:
            raise ValueError(f"expression_weight: must be finite and >= 0, got {expression_weight}")
        self.va_loss = VALoss(va_settings, generator)
        self.expression_weight = expression_weight

    def forward(
        self,
        prediction: EmotionOutput,
        expression: torch.Tensor,
        valence: torch.Tensor,
        arousal: torch.Tensor,
    ) -> EmotionLossOutput:
        va = self.va_loss(prediction.valence, prediction.arousal, valence, arousal)
        nll = expression_nll(prediction.expr_logits, expression)
        terms = dict(va.terms)
        terms["expr_nll"] = nll
        return EmotionLossOutput(va.total + self.expression_weight * nll, terms, va.weights)
