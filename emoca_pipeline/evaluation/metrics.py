"""Emotion metrics over a whole evaluation set: PCC, CCC, RMSE, SAGR, accuracy, macro F1.

The original EMOCA code computed these per batch and averaged the batch values, which
depends on the batch size and on how the set is split. Here every metric is a function of
the whole set: the accumulators keep exact float64 running statistics (count, means,
centred sums of squares and cross products, merged with Chan et al.'s parallel update),
so feeding the set in any batching, or merging accumulators built on separate shards,
gives the same numbers as one big batch (up to float64 rounding).

Conventions (the same in the plain functions and the accumulators):

* Variances are population variances (divide by n), as in Lin's (1989) CCC and in
  EmoNet's evaluation code, whose AffectNet numbers the paper compares against. PCC does
  not depend on this choice; CCC differs from the n-1 version by O(1/n).
* PCC is ``nan`` when either input is constant (zero variance), including n == 1: the
  correlation is undefined there, and ``nan`` (as ``scipy.stats.pearsonr`` returns) keeps an
  undefined value from passing as a real one in a results table. Choosing 0 would
  silently reward or punish a degenerate predictor.
* CCC stays defined when one input is constant: it is 0 unless both inputs are constant
  and equal, where it is 0/0 and returned as ``nan``.
* SAGR counts ``sign(pred) == sign(target)`` with sign(0) == 0, as the original did.
* Macro F1 averages the per-class F1 over all ``n_classes`` labels, with F1 = 0 for a class
  that has neither true nor predicted samples (scikit-learn's
  ``f1_score(average="macro", labels=range(n_classes), zero_division=0)``).
* The confusion matrix has true classes as rows and predicted classes as columns.

Input errors raise ``ValueError`` naming the argument: NaN/inf values, an empty set,
mismatched lengths, non-1-D regression inputs, class labels out of range.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ClassificationAccumulator",
    "ClassificationMetrics",
    "RegressionAccumulator",
    "RegressionMetrics",
    "accuracy",
    "ccc",
    "confusion_matrix",
    "macro_f1",
    "pcc",
    "regression_metrics",
    "rmse",
    "sagr",
]


class RegressionMetrics(NamedTuple):
    """Agreement between a predicted and a target scalar (e.g. valence) over a set.

    pcc: Pearson correlation (nan when either side is constant).
    ccc: concordance correlation 2 r s_x s_y / (s_x^2 + s_y^2 + (m_x - m_y)^2).
    rmse: root mean squared error.
    sagr: fraction of samples whose signs agree.
    """

    pcc: float
    ccc: float
    rmse: float
    sagr: float


class ClassificationMetrics(NamedTuple):
    """Classification quality over a set.

    accuracy: fraction of correct predictions.
    macro_f1: unweighted mean of the per-class F1 over all classes.
    per_class_f1: (C,) float64.
    confusion_matrix: (C, C) int64, rows = true class, columns = predicted class.
    """

    accuracy: float
    macro_f1: float
    per_class_f1: np.ndarray
    confusion_matrix: np.ndarray


# ---------------------------------------------------------------------------------------
# Input checking


def _to_numpy(values: Any, name: str) -> np.ndarray:
    """Array-like or torch tensor -> numpy array (no copy where possible)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # torch.Tensor without import
        values = values.detach().cpu()
        if values.is_floating_point():  # bfloat16 has no numpy dtype
            values = values.double()
        values = values.numpy()
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: cannot be read as an array ({error})") from error


def _regression_vector(values: Any, name: str) -> np.ndarray:
    """Check a regression input and return it as (N,) float64 (N may be 0)."""
    array = _to_numpy(values, name)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name}: expected shape (N,) or (N, 1), got {tuple(array.shape)}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{name}: expected numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - finite.sum())
        raise ValueError(f"{name}: contains {bad} NaN or inf value(s) out of {array.size}")
    return array


def _regression_pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    x = _regression_vector(pred, "pred")
    y = _regression_vector(target, "target")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"pred and target differ in length: {x.shape[0]} vs {y.shape[0]}")
    return x, y


def _require_nonempty(n: int) -> None:
    if n == 0:
        raise ValueError("pred and target are empty: metrics need at least one sample")


def _labels(values: Any, name: str, n_classes: int) -> np.ndarray:
    """Check class labels and return them as (N,) int64."""
    array = _to_numpy(values, name)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name}: expected class labels of shape (N,), got {tuple(array.shape)}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class labels, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= n_classes):
        bad = array[(array < 0) | (array >= n_classes)]
        raise ValueError(
            f"{name}: label {int(bad[0])} is outside 0..{n_classes - 1} "
            f"({bad.size} such label(s))"
        )
    return array


def _predicted_labels(pred: Any, n_classes: int) -> np.ndarray:
    """Labels (N,) or per-class scores (N, C) (argmax taken) -> (N,) int64."""
    array = _to_numpy(pred, "pred")
    if array.ndim == 2 and array.shape[1] != 1:
        if array.shape[1] != n_classes:
            raise ValueError(
                f"pred: scores have {array.shape[1]} columns, expected n_classes={n_classes}"
            )
        scores = array.astype(np.float64, copy=False)
        if not np.isfinite(scores).all():
            raise ValueError("pred: scores contain NaN or inf values")
        return scores.argmax(axis=1).astype(np.int64)
    return _labels(array, "pred", n_classes)


def _check_n_classes(n_classes: int) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)):
        raise ValueError(f"n_classes: expected an int, got {n_classes!r}")
    if n_classes < 1:
        raise ValueError(f"n_classes: must be >= 1, got {n_classes}")
    return int(n_classes)


# ---------------------------------------------------------------------------------------
# Regression


class _Moments(NamedTuple):
    """Sufficient statistics of a paired sample: n, means, centred (co)moments, SSE, signs."""

    n: int
    mean_x: float
    mean_y: float
    m2_x: float  # sum (x - mean_x)^2
    m2_y: float  # sum (y - mean_y)^2
    c_xy: float  # sum (x - mean_x)(y - mean_y)
    sse: float  # sum (x - y)^2
    sign_agree: int  # count of sign(x) == sign(y)


_EMPTY = _Moments(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)


def _moments(x: np.ndarray, y: np.ndarray) -> _Moments:
    """Two-pass moments of one batch (float64)."""
    n = int(x.shape[0])
    if n == 0:
        return _EMPTY
    mean_x = float(x.mean())
    mean_y = float(y.mean())
    dx = x - mean_x
    dy = y - mean_y
    return _Moments(
        n=n,
        mean_x=mean_x,
        mean_y=mean_y,
        m2_x=float(dx @ dx),
        m2_y=float(dy @ dy),
        c_xy=float(dx @ dy),
        sse=float(np.square(x - y).sum()),
        sign_agree=int((np.sign(x) == np.sign(y)).sum()),
    )


def _merge(a: _Moments, b: _Moments) -> _Moments:
    """Chan, Golub & LeVeque's pairwise update: moments of the union of two samples."""
    if a.n == 0:
        return b
    if b.n == 0:
        return a
    n = a.n + b.n
    delta_x = b.mean_x - a.mean_x
    delta_y = b.mean_y - a.mean_y
    weight = a.n * b.n / n
    return _Moments(
        n=n,
        mean_x=a.mean_x + delta_x * b.n / n,
        mean_y=a.mean_y + delta_y * b.n / n,
        m2_x=a.m2_x + b.m2_x + delta_x * delta_x * weight,
        m2_y=a.m2_y + b.m2_y + delta_y * delta_y * weight,
        c_xy=a.c_xy + b.c_xy + delta_x * delta_y * weight,
        sse=a.sse + b.sse,
        sign_agree=a.sign_agree + b.sign_agree,
    )


def _pcc_from(m: _Moments) -> float:
    if m.m2_x <= 0.0 or m.m2_y <= 0.0:
        return math.nan
    r = m.c_xy / math.sqrt(m.m2_x * m.m2_y)
    return max(-1.0, min(1.0, r))  # rounding can overshoot by an ulp


def _ccc_from(m: _Moments) -> float:
    # 2 r s_x s_y = 2 cov; population (1/n) variances and covariance.
    var_x = m.m2_x / m.n
    var_y = m.m2_y / m.n
    cov = m.c_xy / m.n
    denominator = var_x + var_y + (m.mean_x - m.mean_y) ** 2
    if denominator <= 0.0:
        return math.nan
    return 2.0 * cov / denominator


def _metrics_from(m: _Moments) -> RegressionMetrics:
    _require_nonempty(m.n)
    return RegressionMetrics(
        pcc=_pcc_from(m),
        ccc=_ccc_from(m),
        rmse=math.sqrt(m.sse / m.n),
        sagr=m.sign_agree / m.n,
    )


class RegressionAccumulator:
    """Streaming PCC / CCC / RMSE / SAGR of one predicted scalar against its target.

    Call ``update(pred, target)`` once per batch (numpy arrays, torch tensors or lists of
    shape (N,) or (N, 1)); ``compute()`` returns the metrics of everything seen so far,
    identical (to float64 rounding) to the metrics of the concatenated set. ``merge``
    combines accumulators filled on different shards or workers.
    """

    def __init__(self) -> None:
        self._moments = _EMPTY

    @property
    def count(self) -> int:
        """Number of samples seen."""
        return self._moments.n

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch. pred, target: (N,) or (N, 1), finite; N may be 0."""
        x, y = _regression_pair(pred, target)
        self._moments = _merge(self._moments, _moments(x, y))

    def merge(self, other: RegressionAccumulator) -> None:
        """Add everything ``other`` has seen (``other`` is left unchanged)."""
        if not isinstance(other, RegressionAccumulator):
            raise ValueError(f"other: expected a RegressionAccumulator, got {type(other)}")
        self._moments = _merge(self._moments, other._moments)

    def reset(self) -> None:
        """Forget all samples."""
        self._moments = _EMPTY

    def compute(self) -> RegressionMetrics:
        """Metrics over all samples seen; ValueError when none were."""
        if self._moments.n == 0:
            raise ValueError("RegressionAccumulator is empty: call update() before compute()")
        return _metrics_from(self._moments)


def regression_metrics(pred: Any, target: Any) -> RegressionMetrics:
    """PCC, CCC, RMSE and SAGR of ``pred`` against ``target``, both (N,) with N >= 1."""
    x, y = _regression_pair(pred, target)
    _require_nonempty(x.shape[0])
    return _metrics_from(_moments(x, y))


def pcc(pred: Any, target: Any) -> float:
    """Pearson correlation of two (N,) arrays; nan when either is constant (or N == 1)."""
    return regression_metrics(pred, target).pcc


def ccc(pred: Any, target: Any) -> float:
    """Concordance correlation (population variances) of two (N,) arrays.

    0 when exactly one side is constant; nan when both are constant and equal (0/0).
    """
    return regression_metrics(pred, target).ccc


def rmse(pred: Any, target: Any) -> float:
    """Root mean squared error of two (N,) arrays."""
    return regression_metrics(pred, target).rmse


def sagr(pred: Any, target: Any) -> float:
    """Sign agreement rate: mean of sign(pred) == sign(target), with sign(0) == 0."""
    return regression_metrics(pred, target).sagr


# ---------------------------------------------------------------------------------------
# Classification


def _confusion(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    flat = target * n_classes + pred
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _classification_from(matrix: np.ndarray) -> ClassificationMetrics:
    total = int(matrix.sum())
    if total == 0:
        raise ValueError("no samples: classification metrics need at least one sample")
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)  # TP + FP
    actual = matrix.sum(axis=1).astype(np.float64)  # TP + FN
    denominator = predicted + actual  # 2TP + FP + FN
    per_class_f1 = np.divide(
        2.0 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0
    )
    return ClassificationMetrics(
        accuracy=float(true_positive.sum() / total),
        macro_f1=float(per_class_f1.mean()),
        per_class_f1=per_class_f1,
        confusion_matrix=matrix.copy(),
    )


class ClassificationAccumulator:
    """Streaming confusion matrix -> accuracy, macro F1, per-class F1.

    ``update(pred, target)`` takes predicted labels (N,) or per-class scores (N, C)
    (log-probabilities, logits: the argmax is taken) and true labels (N,), all in
    0..n_classes-1.
    """

    def __init__(self, n_classes: int) -> None:
        self.n_classes = _check_n_classes(n_classes)
        self._matrix = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)

    @property
    def count(self) -> int:
        """Number of samples seen."""
        return int(self._matrix.sum())

    @property
    def confusion_matrix(self) -> np.ndarray:
        """(C, C) int64 copy; rows = true class, columns = predicted class."""
        return self._matrix.copy()

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch: pred (N,) labels or (N, C) scores; target (N,) labels."""
        predicted = _predicted_labels(pred, self.n_classes)
        true = _labels(target, "target", self.n_classes)
        if predicted.shape[0] != true.shape[0]:
            raise ValueError(
                f"pred and target differ in length: {predicted.shape[0]} vs {true.shape[0]}"
            )
        self._matrix += _confusion(predicted, true, self.n_classes)

    def merge(self, other: ClassificationAccumulator) -> None:
        """Add everything ``other`` has seen (same n_classes)."""
        if not isinstance(other, ClassificationAccumulator):
            raise ValueError(f"other: expected a ClassificationAccumulator, got {type(other)}")
        if other.n_classes != self.n_classes:
            raise ValueError(
                f"other: n_classes {other.n_classes} differs from {self.n_classes}"
            )
        self._matrix += other._matrix

    def reset(self) -> None:
        """Forget all samples."""
        self._matrix[...] = 0

    def compute(self) -> ClassificationMetrics:
        """Metrics over all samples seen; ValueError when none were."""
        if self.count == 0:
            raise ValueError("ClassificationAccumulator is empty: call update() before compute()")
        return _classification_from(self._matrix)


def _classification(pred: Any, target: Any, n_classes: int) -> ClassificationMetrics:
    accumulator = ClassificationAccumulator(n_classes)
    accumulator.update(pred, target)
    if accumulator.count == 0:
        raise ValueError("pred and target are empty: metrics need at least one sample")
    return accumulator.compute()


def confusion_matrix(pred: Any, target: Any, n_classes: int) -> np.ndarray:
    """(C, C) int64 confusion matrix; rows = true class, columns = predicted class."""
    return _classification(pred, target, n_classes).confusion_matrix


def accuracy(pred: Any, target: Any, n_classes: int) -> float:
    """Fraction of samples whose predicted label (or score argmax) equals the target."""
    return _classification(pred, target, n_classes).accuracy


def macro_f1(pred: Any, target: Any, n_classes: int) -> float:
    """Mean F1 over all n_classes labels; F1 = 0 for classes never seen nor predicted."""
    return _classification(pred, target, n_classes).macro_f1
