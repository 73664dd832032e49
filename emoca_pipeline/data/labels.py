"""Label and annotation tables of the datasets: AffectNet's CSVs and the synthetic table.

- :func:`read_labels`: expression, valence, arousal, identity and split per image key, for
  the manifest (:mod:`emoca_pipeline.data.manifest`).
- :func:`load_ground_truth_landmarks`: the annotated 68 points per image key, for the
  ``gt`` landmarker of the detection stage (:mod:`emoca_pipeline.data.detect`).

Keys are the image paths as the tables write them, with POSIX separators and no leading
``./``: the form the detection stage's keys have.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emoca_pipeline.data.affectnet import (
    affectnet_label_masks,
    parse_affectnet_landmarks,
    read_csv_columns,
)
from emoca_pipeline.data.schema import SPLITS, fixed_list_values

__all__ = ["LABEL_SCHEMA", "load_ground_truth_landmarks", "read_labels"]

#: Columns of the synthetic table that :func:`read_labels` needs (``identity`` optional).
_SYNTHETIC_COLUMNS = ("path", "split", "expression", "valence", "arousal")

#: The table :func:`read_labels` returns (one row per image key).
LABEL_SCHEMA = pa.schema([
    ("key", pa.string()), ("split", pa.string()), ("expression", pa.int16()),
    ("valence", pa.float32()), ("arousal", pa.float32()), ("identity", pa.string()),
    ("keep", pa.bool_()),
])


def read_labels(
    labels: Sequence[str | os.PathLike], validation_split: str = "test"
) -> tuple[str, pa.Table, dict[str, int]]:
    """Read AffectNet CSVs or a synthetic table into one label table.

    Args:
        labels: AffectNet's ``training.csv`` / ``validation.csv`` (the split comes from the
            file name), or one synthetic ``.parquet`` table (with a ``split`` column).
        validation_split: the split of AffectNet's validation rows (``"val"`` or ``"test"``).

    Returns:
        ``(kind, table, counts)``: kind ``"affectnet"`` or ``"synthetic"``; a table with
        :data:`LABEL_SCHEMA` (``keep`` is False for rows AffectNet's rules drop, see
        :func:`~emoca_pipeline.data.affectnet.filter_affectnet_labels`); counts of label rows
        read and dropped by reason.

    Raises:
        FileNotFoundError / ValueError: one line naming the file.
    """
    if not labels:
        raise ValueError("read_labels needs at least one label file")
    tables, kinds = [], set()
    counts = {"label_rows": 0, "dropped_class_8_10": 0, "dropped_invalid_va": 0}
    for label in labels:
        path = Path(label)
        if not path.is_file():
            raise FileNotFoundError(f"--labels {path}: no such file")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            kinds.add("affectnet")
            table = _read_affectnet(path, validation_split, counts)
        elif suffix == ".parquet":
            kinds.add("synthetic")
            table = _read_synthetic(path)
        else:
            raise ValueError(f"--labels {path}: must be an AffectNet .csv or a synthetic "
                             ".parquet table")
        counts["label_rows"] += table.num_rows
        tables.append(table)
    if len(kinds) > 1:
        raise ValueError("--labels mixes AffectNet CSVs and a synthetic table; give one kind")
    table = pa.concat_tables(tables)
    distinct = pc.count_distinct(table.column("key")).as_py()
    if distinct != table.num_rows:
        raise ValueError(f"--labels {', '.join(str(p) for p in labels)}: "
                         f"{table.num_rows - distinct} image paths appear more than once")
    return kinds.pop(), table, counts


def _read_affectnet(path: Path, validation_split: str, counts: dict[str, int]) -> pa.Table:
    stem = path.stem.lower()
    if "train" in stem:
        split = "train"
    elif "val" in stem:
        split = validation_split
    else:
        raise ValueError(f"--labels {path}: cannot tell training from validation rows: the "
                         "file name must contain 'train' or 'val' (training.csv, "
                         "validation.csv)")
    table = read_csv_columns(path, ["subDirectory_filePath", "expression", "valence", "arousal"])
    try:
        expression = pc.cast(table.column("expression"), pa.int16())
        valence = pc.cast(table.column("valence"), pa.float32())
        arousal = pc.cast(table.column("arousal"), pa.float32())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ValueError(f"--labels {path}: expression/valence/arousal are not numbers: "
                         f"{error}") from None
    keys = table.column("subDirectory_filePath")
    if keys.null_count:
        raise ValueError(f"--labels {path}: {keys.null_count} rows without subDirectory_filePath")
    masks = affectnet_label_masks(expression, valence, arousal)
    counts["dropped_class_8_10"] += int((~masks.valid_class).sum())
    counts["dropped_invalid_va"] += int((masks.valid_class & ~masks.valid_va).sum())
    return pa.Table.from_arrays([
        _normalise_keys(keys), pa.array([split] * table.num_rows, pa.string()), expression,
        valence, arousal, pa.nulls(table.num_rows, pa.string()), pa.array(masks.keep),
    ], schema=LABEL_SCHEMA)


def _read_synthetic(path: Path) -> pa.Table:
    names = _parquet_columns(path, "--labels ")
    missing = [name for name in _SYNTHETIC_COLUMNS if name not in names]
    if missing:
        raise ValueError(f"--labels {path}: lacks column(s) {', '.join(missing)} of the "
                         f"synthetic table (has {', '.join(names)})")
    columns = list(_SYNTHETIC_COLUMNS) + (["identity"] if "identity" in names else [])
    table = pq.read_table(path, columns=columns)
    split = table.column("split")
    unknown = pc.unique(pc.filter(split, pc.invert(pc.fill_null(
        pc.is_in(split, pa.array(SPLITS)), False)))).to_pylist()
    if unknown:
        raise ValueError(f"--labels {path}: unknown split value(s) {unknown}; "
                         f"expected {', '.join(SPLITS)}")
    expression = pc.cast(table.column("expression"), pa.int16())
    identity = (pc.cast(table.column("identity"), pa.string()) if "identity" in columns
                else pa.nulls(table.num_rows, pa.string()))
    return pa.Table.from_arrays([
        _normalise_keys(table.column("path")), pc.cast(split, pa.string()), expression,
        pc.cast(table.column("valence"), pa.float32()),
        pc.cast(table.column("arousal"), pa.float32()), identity,
        pa.array(np.ones(table.num_rows, dtype=bool)),
    ], schema=LABEL_SCHEMA)


def _parquet_columns(path: Path, prefix: str = "") -> list[str]:
    try:
        return pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{prefix}{path}: cannot read Parquet table: {error}") from None


def _normalise_keys(keys: pa.ChunkedArray | pa.Array) -> pa.Array:
    """POSIX separators, no leading ``./``: the form detection keys have."""
    keys = pc.cast(keys, pa.string())
    keys = pc.replace_substring(keys, "\\", "/")
    keys = pc.replace_substring_regex(keys, r"^(\./)+", "")
    return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys


def load_ground_truth_landmarks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Per-image 68-point landmarks from a dataset's annotations.

    Args:
        path: a Parquet table with ``path`` and ``landmarks`` (fixed_size_list<float32>[136],
            the synthetic dataset's ``synthetic.parquet``), or an AffectNet CSV with
            ``subDirectory_filePath`` and ``facial_landmarks`` (``"x0;y0;x1;y1;..."``).

    Returns:
        key (the path column's value) -> ``(68, 2)`` float32 pixel coordinates.

    Raises:
        FileNotFoundError / ValueError: one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such landmark table")
    if path.suffix.lower() == ".parquet":
        names = _parquet_columns(path)
        missing = [name for name in ("path", "landmarks") if name not in names]
        if missing:
            raise ValueError(f"{path}: landmark table lacks column(s) {', '.join(missing)}")
        table = pq.read_table(path, columns=["path", "landmarks"])
        keys = table.column("path").to_pylist()
        points = fixed_list_values(table.column("landmarks"), 136, source=str(path),
                                   name="landmarks").reshape(-1, 68, 2)
    elif path.suffix.lower() == ".csv":
        table = read_csv_columns(path, ["subDirectory_filePath", "facial_landmarks"])
        keys = table.column("subDirectory_filePath").to_pylist()
        points = parse_affectnet_landmarks(table.column("facial_landmarks").to_pylist(), path)
    else:
        raise ValueError(f"{path}: landmark table must be .parquet (synthetic) or .csv "
                         "(AffectNet)")
    return {str(key): points[index] for index, key in enumerate(keys)}
