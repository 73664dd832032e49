"""Emotion metrics against scipy / scikit-learn / direct numpy formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from emoca_pipeline.evaluation import (
    ClassificationAccumulator,
    RegressionAccumulator,
    accuracy,
    ccc,
    confusion_matrix,
    macro_f1,
    pcc,
    regression_metrics,
    rmse,
    sagr,
)


def numpy_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's CCC written out directly, population moments."""
    r = np.corrcoef(x, y)[0, 1]
    sx, sy = x.std(), y.std()
    return 2 * r * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)


@pytest.fixture
def va_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    target = np.tanh(rng.normal(size=1000))
    pred = 0.7 * target + 0.1 + 0.3 * rng.normal(size=1000)
    return pred, target


def test_regression_against_references(va_pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = va_pair
    m = regression_metrics(pred, target)
    assert m.pcc == pytest.approx(pearsonr(pred, target)[0], abs=1e-12)
    assert m.ccc == pytest.approx(numpy_ccc(pred, target), abs=1e-12)
    assert m.rmse == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)), abs=1e-12)
    assert m.sagr == pytest.approx(np.mean(np.sign(pred) == np.sign(target)), abs=1e-15)
    # A biased, shrunk predictor: CCC penalises what PCC ignores.
    assert m.ccc < m.pcc
    assert (pcc(pred, target), ccc(pred, target), rmse(pred, target), sagr(pred, target)) == (
        m.pcc, m.ccc, m.rmse, m.sagr,
    )


def test_torch_inputs_and_column_vectors(va_pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = va_pair
    reference = regression_metrics(pred, target)
    from_torch = regression_metrics(
        torch.from_numpy(pred).float().reshape(-1, 1), torch.from_numpy(target).float()
    )
    for a, b in zip(reference, from_torch, strict=True):
        assert a == pytest.approx(b, abs=1e-6)  # float32 round trip


def test_perfect_and_anti_agreement() -> None:
    x = np.linspace(-1, 1, 11)
    assert ccc(x, x) == pytest.approx(1.0)
    assert pcc(x, x) == pytest.approx(1.0)
    assert ccc(-x, x) == pytest.approx(-1.0)
    assert pcc(2 * x + 3, x) == pytest.approx(1.0)
    assert ccc(2 * x + 3, x) < 0.5  # correlated but not concordant


def test_batched_equals_whole(va_pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = va_pair
    whole = regression_metrics(pred, target)
    accumulator = RegressionAccumulator()
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, len(pred)), size=40, replace=False))
    for p, t in zip(np.split(pred, cuts), np.split(target, cuts), strict=True):
        accumulator.update(torch.from_numpy(p), t)
    accumulator.update(pred[:0], target[:0])  # an empty batch is harmless
    assert accumulator.count == len(pred)
    batched = accumulator.compute()
    for a, b in zip(whole, batched, strict=True):
        assert a == pytest.approx(b, abs=1e-12)
    # Merging shard accumulators gives the same again.
    left, right = RegressionAccumulator(), RegressionAccumulator()
    left.update(pred[:333], target[:333])
    right.update(pred[333:], target[333:])
    left.merge(right)
    for a, b in zip(whole, left.compute(), strict=True):
        assert a == pytest.approx(b, abs=1e-12)


def test_accumulator_is_stable_with_large_offset() -> None:
    """Chan's merge keeps precision where naive sums of squares would cancel."""
    rng = np.random.default_rng(2)
    x = 1e8 + rng.normal(size=5000)
    y = 1e8 + x - 1e8 + 0.5 * rng.normal(size=5000)
    accumulator = RegressionAccumulator()
    for p, t in zip(np.split(x, 50), np.split(y, 50), strict=True):
        accumulator.update(p, t)
    expected = pearsonr(x - 1e8, y - 1e8)[0]
    assert accumulator.compute().pcc == pytest.approx(expected, abs=1e-6)


def test_constant_predictions() -> None:
    target = np.array([-0.5, 0.1, 0.4, 0.9])
    constant = np.full(4, 0.2)
    m = regression_metrics(constant, target)
    assert math.isnan(m.pcc)  # undefined: documented as nan, like scipy
    assert m.ccc == 0.0  # stays defined: zero covariance
    assert m.rmse == pytest.approx(np.sqrt(np.mean((0.2 - target) ** 2)))
    assert m.sagr == pytest.approx(0.75)
    # Both constant and equal: 0/0 -> nan; constant but different -> 0.
    assert math.isnan(ccc(np.ones(3), np.ones(3)))
    assert ccc(np.ones(3), np.zeros(3)) == 0.0


def test_tiny_sets() -> None:
    one = regression_metrics([0.5], [-0.25])
    assert math.isnan(one.pcc)
    assert one.ccc == 0.0
    assert one.rmse == pytest.approx(0.75)
    assert one.sagr == 0.0
    two = regression_metrics([0.0, 1.0], [1.0, 3.0])
    assert two.pcc == pytest.approx(1.0)
    assert two.ccc == pytest.approx(numpy_ccc(np.array([0.0, 1.0]), np.array([1.0, 3.0])))
    assert two.sagr == 0.5  # sign(0) == 0 differs from sign(1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_raise(bad: float) -> None:
    values = np.array([0.1, bad, 0.3])
    with pytest.raises(ValueError, match="pred: contains 1 NaN or inf"):
        pcc(values, np.zeros(3))
    with pytest.raises(ValueError, match="target: contains 1 NaN or inf"):
        RegressionAccumulator().update(np.zeros(3), values)


def test_regression_input_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        ccc([], [])
    with pytest.raises(ValueError, match="empty"):
        RegressionAccumulator().compute()
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        rmse([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"pred: expected shape \(N,\) or \(N, 1\)"):
        sagr(np.zeros((4, 2)), np.zeros(4))


def _random_labels(seed: int, n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.integers(0, n_classes, size=n)
    # Correct 60 % of the time, so every metric is away from its trivial value.
    pred = np.where(rng.random(n) < 0.6, target, rng.integers(0, n_classes, size=n))
    return pred, target


def test_classification_against_sklearn() -> None:
    pred, target = _random_labels(3, 500, 8)
    labels = list(range(8))
    assert accuracy(pred, target, 8) == pytest.approx(accuracy_score(target, pred))
    assert macro_f1(pred, target, 8) == pytest.approx(
        f1_score(target, pred, average="macro", labels=labels, zero_division=0)
    )
    np.testing.assert_array_equal(
        confusion_matrix(pred, target, 8), sk_confusion_matrix(target, pred, labels=labels)
    )


def test_absent_classes_match_sklearn_zero_division() -> None:
    # Class 3 never occurs, class 2 only predicted, class 4 only true.
    target = np.array([0, 0, 1, 1, 4, 4])
    pred = np.array([0, 2, 1, 1, 0, 1])
    expected = f1_score(target, pred, average="macro", labels=range(5), zero_division=0)
    assert macro_f1(pred, target, 5) == pytest.approx(expected)
    per_class = ClassificationAccumulator(5)
    per_class.update(pred, target)
    np.testing.assert_allclose(
        per_class.compute().per_class_f1,
        f1_score(target, pred, average=None, labels=range(5), zero_division=0),
    )


def test_classification_batched_equals_whole_and_scores() -> None:
    pred, target = _random_labels(4, 600, 8)
    rng = np.random.default_rng(5)
    # Scores whose argmax is pred: log-softmax outputs as the networks give them.
    scores = torch.log_softmax(torch.from_numpy(rng.normal(size=(600, 8))), dim=1)
    scores[torch.arange(600), torch.from_numpy(pred)] = 10.0
    accumulator = ClassificationAccumulator(8)
    for start in range(0, 600, 64):
        accumulator.update(scores[start:start + 64], torch.from_numpy(target[start:start + 64]))
    whole = ClassificationAccumulator(8)
    whole.update(pred, target)
    batched, single = accumulator.compute(), whole.compute()
    assert batched.accuracy == single.accuracy
    assert batched.macro_f1 == single.macro_f1
    np.testing.assert_array_equal(batched.confusion_matrix, single.confusion_matrix)
    merged = ClassificationAccumulator(8)
    merged.update(pred[:100], target[:100])
    rest = ClassificationAccumulator(8)
    rest.update(pred[100:], target[100:])
    merged.merge(rest)
    np.testing.assert_array_equal(merged.confusion_matrix, single.confusion_matrix)


def test_classification_tiny_sets() -> None:
    assert accuracy([2], [2], 3) == 1.0
    # One class correct, two classes absent: macro F1 averages over all 3 labels.
    assert macro_f1([2], [2], 3) == pytest.approx(1 / 3)
    assert macro_f1([0, 1], [1, 0], 2) == 0.0


def test_classification_input_errors() -> None:
    with pytest.raises(ValueError, match="target: label 8 is outside 0..7"):
        accuracy([0, 1], [0, 8], 8)
    with pytest.raises(ValueError, match="pred: label -1 is outside"):
        accuracy([0, -1], [0, 1], 8)
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        macro_f1([0, 1, 2], [0, 1], 8)
    with pytest.raises(ValueError, match="empty"):
        ClassificationAccumulator(8).compute()
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [], 8)
    with pytest.raises(ValueError, match="integer class labels"):
        accuracy([0, 1], [0.0, 1.0], 8)
    with pytest.raises(ValueError, match="pred: scores have 3 columns, expected n_classes=8"):
        accuracy(np.zeros((2, 3)), [0, 1], 8)
    with pytest.raises(ValueError, match="pred: scores contain NaN"):
        accuracy(np.full((2, 8), np.nan), [0, 1], 8)
    with pytest.raises(ValueError, match="n_classes: must be >= 1"):
        ClassificationAccumulator(0)
