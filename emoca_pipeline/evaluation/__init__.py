"""Evaluation: whole-set metrics, result tables, exact scan-to-mesh geometry.

The protocols live in their modules: :mod:`.now` (NoW), :mod:`.synthetic` (the synthetic
benchmark), :mod:`.affectnet` (emotion from reconstructed codes), :mod:`.emotion_table`.
"""

from emoca_pipeline.evaluation.geometry import (
    ClosestPoints,
    MeshDistance,
    Similarity,
    closest_points_on_triangles,
    procrustes,
    refine_similarity,
)
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
from emoca_pipeline.evaluation.tables import (
    TableFiles,
    csv_table,
    latex_table,
    markdown_table,
    write_tables,
)

__all__ = [
    "ClassificationAccumulator",
    "ClassificationMetrics",
    "ClosestPoints",
    "MeshDistance",
    "RegressionAccumulator",
    "RegressionMetrics",
    "Similarity",
    "TableFiles",
    "accuracy",
    "ccc",
    "closest_points_on_triangles",
    "confusion_matrix",
    "csv_table",
    "latex_table",
    "macro_f1",
    "markdown_table",
    "pcc",
    "procrustes",
    "refine_similarity",
    "regression_metrics",
    "rmse",
    "sagr",
    "write_tables",
]
