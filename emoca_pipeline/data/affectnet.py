"""AffectNet's conventions, defined once: class names, the label filter, its CSV files.

AffectNet (Mollahosseini et al. 2017) ships ``training.csv`` and ``validation.csv`` with
the columns :data:`AFFECTNET_COLUMNS`. Expression classes 0-7 are :data:`AFFECTNET_CLASSES`;
8 (None), 9 (Uncertain) and 10 (Non-face) are dropped for training and evaluation, as is
a row whose valence or arousal is AffectNet's "invalid" marker -2 (EmoNet and EMOCA do the
same): :func:`filter_affectnet_labels` is that rule. ``facial_landmarks`` holds the 68 iBUG
points as ``"x0;y0;x1;y1;..."``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

__all__ = [
    "AFFECTNET_CLASSES",
    "AFFECTNET_COLUMNS",
    "AFFECTNET_INVALID_VA",
    "AffectNetLabelMasks",
    "affectnet_class_name",
    "affectnet_label_masks",
    "csv_header",
    "filter_affectnet_labels",
    "parse_affectnet_landmarks",
    "read_csv_columns",
]

#: AffectNet's expression classes 0..7 in the dataset's own order.
AFFECTNET_CLASSES: tuple[str, ...] = (
    "Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
)

#: AffectNet's marker for a missing valence/arousal annotation.
AFFECTNET_INVALID_VA = -2.0

#: Columns of AffectNet's training.csv / validation.csv, in file order.
AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                     "facial_landmarks", "expression", "valence", "arousal")

#: CSV columns read as text, whatever they look like (paths, landmark strings).
_TEXT_COLUMNS = frozenset({"subDirectory_filePath", "facial_landmarks", "path", "image_path",
                           "file"})


# --------------------------------------------------------------------------------------------
# The label rule
# --------------------------------------------------------------------------------------------


class AffectNetLabelMasks(NamedTuple):
    """Which rows AffectNet's rules keep, and why the others go.

    Attributes:
        valid_class: ``(N,)`` bool, the expression is one of the 8 classes 0..7 (an integer;
            8-10, other values, NaN and nulls are not).
        valid_va: ``(N,)`` bool, valence and arousal are finite and not -2.
    """

    valid_class: np.ndarray
    valid_va: np.ndarray

    @property
    def keep(self) -> np.ndarray:
        """``(N,)`` bool: rows usable for 8-class training and evaluation."""
        return self.valid_class & self.valid_va


def _column(values: Any, name: str) -> np.ndarray:
    """A ``(N,)`` or ``(N, 1)`` sequence, array, tensor or Arrow array -> ``(N,)`` numbers.

    Arrow nulls become NaN (so a missing label is never valid)."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = values.cast(pa.float64()).fill_null(float("nan")).to_numpy()
    elif hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name}: expected shape (N,), got {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name}: expected numbers, got dtype {array.dtype}")
    return array


def affectnet_label_masks(expression: Any, valence: Any, arousal: Any) -> AffectNetLabelMasks:
    """AffectNet's label rule, split into its two parts (see :class:`AffectNetLabelMasks`).

    Args:
        expression, valence, arousal: ``(N,)`` each: sequences, numpy arrays, torch tensors
            or Arrow arrays (nulls count as invalid).

    Raises:
        ValueError: the three differ in length, or are not 1-D numbers.
    """
    expr = _column(expression, "expression").astype(np.float64)
    v = _column(valence, "valence").astype(np.float64)
    a = _column(arousal, "arousal").astype(np.float64)
    if not (expr.shape[0] == v.shape[0] == a.shape[0]):
        raise ValueError(
            f"expression, valence, arousal differ in length: "
            f"{expr.shape[0]}, {v.shape[0]}, {a.shape[0]}"
        )
    with np.errstate(invalid="ignore"):
        valid_class = (np.isfinite(expr) & (expr == np.round(expr)) & (expr >= 0)
                       & (expr < len(AFFECTNET_CLASSES)))
        valid_va = (np.isfinite(v) & np.isfinite(a) & (v != AFFECTNET_INVALID_VA)
                    & (a != AFFECTNET_INVALID_VA))
    return AffectNetLabelMasks(valid_class, valid_va)


def filter_affectnet_labels(expression: Any, valence: Any, arousal: Any) -> np.ndarray:
    """Rows usable for 8-class AffectNet training/evaluation ("like EmoNet").

    Keeps rows whose expression is one of the 8 classes 0..7 (drops 8 None, 9 Uncertain,
    10 Non-face and anything else out of range, NaN included) and whose valence and arousal
    are finite and not AffectNet's -2 "missing" marker.

    expression, valence, arousal: (N,) each. Returns a (N,) bool mask.
    """
    return affectnet_label_masks(expression, valence, arousal).keep


def affectnet_class_name(expression: int | None) -> str:
    """The class name of an expression index; ``"unlabelled"`` for None, the number else."""
    if expression is None:
        return "unlabelled"
    if 0 <= expression < len(AFFECTNET_CLASSES):
        return AFFECTNET_CLASSES[expression]
    return str(expression)


# --------------------------------------------------------------------------------------------
# CSV files
# --------------------------------------------------------------------------------------------


def csv_header(path: str | os.PathLike) -> list[str]:
    """Column names of a CSV file; AffectNet's names when a 9-column file has no header.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty or not text.
    """
    return _csv_layout(Path(path))[0]


def _csv_layout(path: Path) -> tuple[list[str], bool]:
    """(column names, whether the file lacks a header line)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            first = next(csv.reader([f.readline()]), [])
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 CSV file") from None
    names = [name.strip() for name in first]
    if not names:
        raise ValueError(f"{path}: empty CSV file (no header)")
    # Some AffectNet copies ship validation.csv without its header: the first line is then
    # a data row, a path with a "/" followed by numbers.
    if len(names) == len(AFFECTNET_COLUMNS) and "/" in names[0]:
        try:
            [float(value) for value in names[1:5] + names[6:]]
        except ValueError:
            return names, False
        return list(AFFECTNET_COLUMNS), True
    return names, False


def read_csv_columns(path: str | os.PathLike, columns: Sequence[str]) -> pa.Table:
    """Read ``columns`` of a CSV file with pyarrow (paths and landmark strings as strings).

    Raises:
        FileNotFoundError / ValueError: one line naming the file (missing columns listed).
    """
    import pyarrow.csv as pacsv

    path = Path(path)
    names, headerless = _csv_layout(path)
    missing = [column for column in columns if column not in names]
    if missing:
        raise ValueError(f"{path}: lacks column(s) {', '.join(missing)} "
                         f"(has {', '.join(names)})")
    read_options = pacsv.ReadOptions(column_names=names if headerless else None,
                                     encoding="utf8")
    convert_options = pacsv.ConvertOptions(
        include_columns=list(columns),
        column_types={name: pa.string() for name in columns if name in _TEXT_COLUMNS},
        strings_can_be_null=True,
    )
    try:
        return pacsv.read_csv(path, read_options=read_options, convert_options=convert_options)
    except (pa.ArrowInvalid, UnicodeDecodeError) as error:
        message = " ".join(str(error).split())[:200]
        raise ValueError(f"{path}: cannot parse CSV: {message}") from None


def parse_affectnet_landmarks(texts: Sequence[str | None], path: str | os.PathLike) -> np.ndarray:
    """``facial_landmarks`` strings -> ``(N, 68, 2)`` float32; NaN rows where a text is empty.

    Raises:
        ValueError: a row without 136 numbers, naming ``path`` and the row (1-based).
    """
    points = np.full((len(texts), 68, 2), np.nan, dtype=np.float32)
    for index, text in enumerate(texts):
        if not text:
            continue  # no annotation: the image becomes a no_face row
        values = text.split(";")
        if len(values) != 136:
            raise ValueError(f"{path}: row {index + 1}: facial_landmarks has {len(values)} "
                             "values, expected 136 (68 x;y pairs)")
        try:
            points[index] = np.asarray(values, dtype=np.float32).reshape(68, 2)
        except ValueError:
            raise ValueError(f"{path}: row {index + 1}: facial_landmarks is not numbers: "
                             f"{text[:40]!r}") from None
    return points
