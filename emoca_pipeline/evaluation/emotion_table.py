"""Emotion predictions on disk, and the paper-format table comparing several models.

Inference and evaluation are separate steps joined by a Parquet file of predictions
(:data:`PREDICTIONS_SCHEMA`), one row per (image, model):

=================  ============================  ==============================================
``image_id``       string                        the image key (the manifest's ``image_id``)
``model``          string                        the model's name (a row of the table)
``split``          string                        the manifest split the row comes from
``expr_pred``      int64                         argmax class, AffectNet order 0..7
``expr_logits``    fixed_size_list<float32>[C]   log-softmax outputs (C = 8)
``valence_pred``   float32
``arousal_pred``   float32
``expression``     int64, nullable               ground truth (null when unlabelled)
``valence``        float32, nullable
``arousal``        float32, nullable
=================  ============================  ==============================================

The file metadata holds ``emoca.table = "emotion_predictions"`` and the class names.

:func:`evaluate_emotion` reads prediction files of several models, checks that every model
was run on the same images (the same test split; rows whose ground truth AffectNet would
drop are left out first, as in training), computes the metrics of
:mod:`emoca_pipeline.evaluation.metrics` over each model's whole set, and writes:

* ``emotion_table.csv`` / ``.md`` / ``.tex``: rows = models, columns :data:`TABLE_COLUMNS`
  (V = valence, A = arousal, E = expression; CSV in full precision, Markdown and LaTeX
  rounded to 3 decimals; an undefined value, e.g. PCC of a constant predictor, is ``nan``
  in CSV and "--" elsewhere);
* ``confusion_matrices.png``: one panel per model, rows = true class, colour = fraction of
  the true class, numbers = counts;
* ``emotion_metrics.json``: the same numbers plus sample counts, per-class F1 and the
  confusion matrices.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emoca_pipeline.data.affectnet import AFFECTNET_CLASSES, filter_affectnet_labels
from emoca_pipeline.evaluation.metrics import (
    ClassificationAccumulator,
    ClassificationMetrics,
    RegressionMetrics,
    regression_metrics,
)
from emoca_pipeline.evaluation.tables import csv_table, format_value, latex_table, markdown_table
from emoca_pipeline.io import atomic_output, atomic_write_text

__all__ = [
    "PREDICTIONS_SCHEMA",
    "TABLE_COLUMNS",
    "EmotionEvaluation",
    "ModelEmotionMetrics",
    "evaluate_emotion",
    "predictions_schema",
    "read_emotion_predictions",
    "table_markdown",
    "table_latex",
    "write_emotion_predictions",
]

#: Columns of the paper-format table, in order.
TABLE_COLUMNS: tuple[str, ...] = (
    "V-PCC", "V-CCC", "V-RMSE", "V-SAGR",
    "A-PCC", "A-CCC", "A-RMSE", "A-SAGR",
    "E-ACC", "E-F1",
)

_TABLE_NAME = "emotion_predictions"


def predictions_schema(n_classes: int = len(AFFECTNET_CLASSES),
                       class_names: Sequence[str] = AFFECTNET_CLASSES) -> pa.Schema:
    """The predictions schema for ``n_classes`` classes (see the module docstring)."""
    if len(class_names) != n_classes:
        raise ValueError(f"class_names: {len(class_names)} names for {n_classes} classes")
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=True),
            pa.field("expr_pred", pa.int64(), nullable=False),
            pa.field("expr_logits", pa.list_(pa.float32(), n_classes), nullable=False),
            pa.field("valence_pred", pa.float32(), nullable=False),
            pa.field("arousal_pred", pa.float32(), nullable=False),
            pa.field("expression", pa.int64(), nullable=True),
            pa.field("valence", pa.float32(), nullable=True),
            pa.field("arousal", pa.float32(), nullable=True),
        ],
        metadata={
            b"emoca.table": _TABLE_NAME.encode(),
            b"emoca.classes": json.dumps(list(class_names)).encode(),
        },
    )


#: The schema for AffectNet's 8 classes.
PREDICTIONS_SCHEMA = predictions_schema()


def write_emotion_predictions(
    path: str | os.PathLike,
    image_ids: Sequence[str],
    model: str,
    expr_log_probs: np.ndarray,
    valence_pred: np.ndarray,
    arousal_pred: np.ndarray,
    expression: np.ndarray | None = None,
    valence: np.ndarray | None = None,
    arousal: np.ndarray | None = None,
    split: Sequence[str | None] | None = None,
    class_names: Sequence[str] = AFFECTNET_CLASSES,
) -> Path:
    """Write one model's predictions atomically.

    Args:
        image_ids: (N,) keys. model: the model's name.
        expr_log_probs: (N, C) log-probabilities. valence_pred, arousal_pred: (N,).
        expression, valence, arousal: (N,) ground truth; NaN (or a negative class) = null;
            None = unlabelled.
        split: (N,) split names, or None.
    """
    log_probs = np.asarray(expr_log_probs, dtype=np.float32)
    n = len(image_ids)
    if log_probs.ndim != 2 or log_probs.shape[0] != n:
        raise ValueError(f"expr_log_probs: expected shape ({n}, C), got {log_probs.shape}")
    n_classes = log_probs.shape[1]
    schema = predictions_schema(n_classes, class_names)

    def vector(values: np.ndarray | None, name: str, dtype: type) -> pa.Array:
        if values is None:
            return pa.nulls(n, type=pa.from_numpy_dtype(np.dtype(dtype)))
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        if array.shape[0] != n:
            raise ValueError(f"{name}: expected {n} values, got {array.shape[0]}")
        invalid = ~np.isfinite(array)
        if dtype is np.int64:
            invalid |= array < 0
            return pa.array(np.where(invalid, 0, array).astype(np.int64), mask=invalid)
        return pa.array(np.where(invalid, 0, array).astype(dtype), mask=invalid)

    valence_p = vector(valence_pred, "valence_pred", np.float32)
    arousal_p = vector(arousal_pred, "arousal_pred", np.float32)
    if valence_p.null_count or arousal_p.null_count or not np.isfinite(log_probs).all():
        raise ValueError(f"{path}: predictions of model {model!r} contain NaN or inf values")
    columns = [
        pa.array([str(key) for key in image_ids], type=pa.string()),
        pa.array([model] * n, type=pa.string()),
        pa.array(list(split) if split is not None else [None] * n, type=pa.string()),
        pa.array(log_probs.argmax(axis=1).astype(np.int64)),
        pa.FixedSizeListArray.from_arrays(pa.array(log_probs.reshape(-1)), n_classes),
        valence_p,
        arousal_p,
        vector(expression, "expression", np.int64),
        vector(valence, "valence", np.float32),
        vector(arousal, "arousal", np.float32),
    ]
    table = pa.Table.from_arrays(columns, schema=schema)
    path = Path(path)
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_emotion_predictions(path: str | os.PathLike) -> pa.Table:
    """Read and check a predictions file; returns the table (schema as written).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not Parquet, not a predictions table, or a missing column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a Parquet file ({' '.join(str(error).split())})") \
            from error
    missing = [f.name for f in PREDICTIONS_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not an emotion predictions table (missing column(s) "
                         f"{', '.join(missing)})")
    kind = pa.types
    logits_type = table.schema.field("expr_logits").type
    if not (kind.is_fixed_size_list(logits_type) or kind.is_list(logits_type)
            or kind.is_large_list(logits_type)):
        raise ValueError(f"{path}: column expr_logits must be a list column, got {logits_type}")
    return table


# ---------------------------------------------------------------------------------------
# Evaluation


class ModelEmotionMetrics(NamedTuple):
    """One model's metrics over its evaluation set.

    model: the name; source: the predictions file; count: evaluated samples;
    dropped: rows left out because of invalid ground truth; valence, arousal: regression
    metrics; expression: classification metrics (with the (C, C) confusion matrix).
    """

    model: str
    source: Path
    count: int
    dropped: int
    valence: RegressionMetrics
    arousal: RegressionMetrics
    expression: ClassificationMetrics

    def row(self) -> dict[str, float]:
        """The model's row of the paper-format table, keyed by :data:`TABLE_COLUMNS`."""
        v, a, e = self.valence, self.arousal, self.expression
        values = (v.pcc, v.ccc, v.rmse, v.sagr, a.pcc, a.ccc, a.rmse, a.sagr,
                  e.accuracy, e.macro_f1)
        return dict(zip(TABLE_COLUMNS, (float(x) for x in values), strict=True))


class EmotionEvaluation(NamedTuple):
    """Result of :func:`evaluate_emotion`: the per-model metrics and the files written."""

    models: list[ModelEmotionMetrics]
    class_names: tuple[str, ...]
    csv: Path
    markdown: Path
    latex: Path
    confusion_png: Path
    json: Path

    def metrics(self) -> dict[str, float]:
        """Every cell as an MLflow metric ``<model>/<column>`` (e.g. ``emoca/e_acc``)."""
        from emoca_pipeline.tracking import metric_key

        return {metric_key(m.model, column): value for m in self.models
                for column, value in m.row().items()}

    def files(self) -> list[Path]:
        """The files written (tables, JSON, confusion matrices)."""
        return [self.csv, self.markdown, self.latex, self.json, self.confusion_png]


def _class_names(table: pa.Table, n_classes: int, source: Path) -> tuple[str, ...]:
    raw = (table.schema.metadata or {}).get(b"emoca.classes")
    if raw is None:
        if n_classes == len(AFFECTNET_CLASSES):
            return AFFECTNET_CLASSES
        return tuple(str(i) for i in range(n_classes))
    try:
        names = tuple(str(name) for name in json.loads(raw.decode()))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: unreadable emoca.classes metadata ({error})") from error
    if len(names) != n_classes:
        raise ValueError(f"{source}: {len(names)} class names for {n_classes} expr_logits")
    return names


def _model_metrics(table: pa.Table, model: str, source: Path, n_classes: int
                   ) -> tuple[ModelEmotionMetrics, np.ndarray]:
    """Metrics of one model's rows; also returns the sorted image ids evaluated."""
    def floats(name: str) -> np.ndarray:
        column = table.column(name)
        return column.cast(pa.float64()).fill_null(math.nan).to_numpy()

    expression = floats("expression")
    valence, arousal = floats("valence"), floats("arousal")
    keep = filter_affectnet_labels(expression, valence, arousal)
    if not keep.any():
        raise ValueError(f"{source}: model {model!r} has no rows with valid ground truth "
                         "(expression 0..7, valence and arousal set)")
    if int(expression[keep].max()) >= n_classes:
        raise ValueError(f"{source}: ground-truth class {int(expression[keep].max())} of model "
                         f"{model!r} is outside the {n_classes} predicted classes")
    logits_type = table.schema.field("expr_logits").type
    flat = table.column("expr_logits").combine_chunks().flatten()
    if flat.null_count or len(flat) != table.num_rows * n_classes:
        raise ValueError(f"{source}: expr_logits of model {model!r} must hold {n_classes} "
                         f"values per row (type {logits_type})")
    logits = flat.to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, n_classes)
    classes = ClassificationAccumulator(n_classes)
    try:
        classes.update(logits[keep], expression[keep].astype(np.int64))
        valence_metrics = regression_metrics(floats("valence_pred")[keep], valence[keep])
        arousal_metrics = regression_metrics(floats("arousal_pred")[keep], arousal[keep])
    except ValueError as error:
        raise ValueError(f"{source}: model {model!r}: {error}") from error
    ids = np.sort(np.asarray(table.column("image_id").to_pylist(), dtype=object)[keep])
    metrics = ModelEmotionMetrics(
        model=model, source=source, count=int(keep.sum()), dropped=int((~keep).sum()),
        valence=valence_metrics, arousal=arousal_metrics, expression=classes.compute(),
    )
    return metrics, ids


def evaluate_emotion(
    prediction_files: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
    stem: str = "emotion_table", metrics_file: str = "emotion_metrics.json",
    confusion_file: str = "confusion_matrices.png",
) -> EmotionEvaluation:
    """Compare the models in ``prediction_files`` on one test split; write the table.

    Every model must cover the same images (after dropping rows with invalid ground truth);
    a model name may appear in only one file. See the module docstring for the outputs;
    ``stem``, ``metrics_file`` and ``confusion_file`` name them in ``out_dir``
    (``<stem>.csv``, ``.md``, ``.tex``).

    Raises:
        FileNotFoundError: a predictions file does not exist.
        ValueError: no files, a bad file, a duplicate model, models on different images or
            with different class sets (one line naming the file).
    """
    if not prediction_files:
        raise ValueError("predictions: give at least one predictions file")
    results: list[ModelEmotionMetrics] = []
    reference: tuple[ModelEmotionMetrics, np.ndarray] | None = None
    class_names: tuple[str, ...] | None = None
    seen: dict[str, Path] = {}
    for file in prediction_files:
        source = Path(file)
        table = read_emotion_predictions(source)
        if table.num_rows == 0:
            raise ValueError(f"{source}: the predictions file is empty")
        logits_type = table.schema.field("expr_logits").type
        n_classes = (logits_type.list_size if pa.types.is_fixed_size_list(logits_type)
                     else int(np.asarray(table.column("expr_logits").combine_chunks()
                                         .value_lengths())[0]))
        names = _class_names(table, n_classes, source)
        if class_names is None:
            class_names = names
        elif names != class_names:
            raise ValueError(f"{source}: classes {list(names)} differ from "
                             f"{list(class_names)} of {results[0].source}")
        models = table.column("model")
        for model in sorted(set(models.to_pylist())):
            if model in seen:
                raise ValueError(f"{source}: model {model!r} is also in {seen[model]}; "
                                 "give each model once")
            seen[model] = source
            rows = table.filter(pc.equal(models, model))
            metrics, ids = _model_metrics(rows, model, source, n_classes)
            if reference is None:
                reference = (metrics, ids)
            elif ids.shape != reference[1].shape or not np.array_equal(ids, reference[1]):
                ref = reference[0]
                raise ValueError(
                    f"{source}: model {model!r} was evaluated on {metrics.count} images, "
                    f"{ref.model!r} ({ref.source}) on {ref.count}, and the image ids differ: "
                    "the table compares models on one test split"
                )
            results.append(metrics)
    assert class_names is not None
    out = Path(out_dir)
    return _write_outputs(results, class_names, out, out / f"{stem}.csv", out / f"{stem}.md",
                          out / f"{stem}.tex", out / confusion_file, out / metrics_file)


# ---------------------------------------------------------------------------------------
# Output formats


def _format(value: float, digits: int = 3) -> str:
    return format_value(value, digits)


def table_markdown(models: Sequence[ModelEmotionMetrics], digits: int = 3) -> str:
    """The table as GitHub Markdown (rounded to ``digits`` decimals)."""
    counts = ", ".join(f"{m.model}: {m.count}" for m in models)
    return markdown_table([m.model for m in models], TABLE_COLUMNS,
                          [list(m.row().values()) for m in models], digits=digits,
                          notes=[f"Test samples per model: {counts}."])


def table_latex(models: Sequence[ModelEmotionMetrics], digits: int = 3) -> str:
    """The table as a LaTeX ``tabular`` (booktabs rules; rounded to ``digits`` decimals)."""
    return latex_table([m.model for m in models], TABLE_COLUMNS,
                       [list(m.row().values()) for m in models], digits=digits,
                       comment="emotion recognition on one test split")


def _table_csv(models: Sequence[ModelEmotionMetrics]) -> str:
    return csv_table([m.model for m in models], TABLE_COLUMNS,
                     [list(m.row().values()) for m in models],
                     extra={"n": [m.count for m in models]})


def _confusion_png(models: Sequence[ModelEmotionMetrics], class_names: Sequence[str],
                   path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    n = len(models)
    size = max(4.0, 0.5 * len(class_names) + 1.5)
    figure = Figure(figsize=(size * n, size), layout="constrained")
    axes = figure.subplots(1, n, squeeze=False)[0]
    for ax, metrics in zip(axes, models, strict=True):
        matrix = metrics.expression.confusion_matrix
        totals = matrix.sum(axis=1, keepdims=True)
        fractions = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
        image = ax.imshow(fractions, vmin=0.0, vmax=1.0, cmap="Blues")
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                    color="white" if fractions[row, col] > 0.5 else "black")
        ticks = np.arange(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(ticks, class_names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{metrics.model}\nacc {_format(metrics.expression.accuracy)}, "
                     f"F1 {_format(metrics.expression.macro_f1)}", fontsize=9)
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="fraction of true class")
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def _write_outputs(models: list[ModelEmotionMetrics], class_names: tuple[str, ...],
                   out_dir: Path, csv_path: Path, md_path: Path, tex_path: Path,
                   png_path: Path, json_path: Path) -> EmotionEvaluation:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(csv_path, _table_csv(models))
    atomic_write_text(md_path, table_markdown(models))
    atomic_write_text(tex_path, table_latex(models))
    _confusion_png(models, class_names, png_path)

    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    summary = {
        "classes": list(class_names),
        "models": [
            {
                "model": m.model,
                "predictions": str(m.source),
                "count": m.count,
                "dropped_invalid_labels": m.dropped,
                "table": {k: finite(v) for k, v in m.row().items()},
                "per_class_f1": [float(x) for x in m.expression.per_class_f1],
                "confusion_matrix": m.expression.confusion_matrix.tolist(),
            }
            for m in models
        ],
    }
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    return EmotionEvaluation(models, class_names, csv_path, md_path, tex_path, png_path,
                             json_path)
