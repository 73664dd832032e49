"""Evaluation metrics computed over whole evaluation sets."""

from emoca_pipeline.evaluation.metrics import (
    ClassificationAccumulator,
    ClassificationMetrics,
    RegressionAccumulator,
    RegressionMetrics,
    accuracy,
    ccc,
    confusion_matrix,
    macro_f1,
    pcc,
    regression_metrics,
    rmse,
    sagr,
)

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
