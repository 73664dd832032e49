"""The manifest: detections joined with labels and splits, as a partitioned Parquet dataset.

``emoca manifest DETECTIONS OUT --dataset NAME [--labels FILE ...]`` reads the detection
shards of one dataset (see :mod:`emoca_pipeline.data.detect`), keeps the faces (status
``ok``), joins them on ``path`` with the labels and assigns splits:

- **AffectNet** (``--labels training.csv --labels validation.csv``): columns
  ``subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks,
  expression, valence, arousal``. The 8 emotion classes 0-7 are kept; rows with classes
  8-10 (none, uncertain, no-face) or valence/arousal = -2 (AffectNet's "invalid") are
  dropped. A file whose name contains ``train`` gives the ``train`` split, one whose name
  contains ``val`` gives ``validation_split`` (``test`` by default: AffectNet's test set is
  not public, and the paper reports on its validation set). Labels are per image, so only
  the largest face of an image (``face_index == 0``) is kept.
- **synthetic** (``--labels synthetic.parquet``): columns ``path, split, expression, valence,
  arousal`` and optionally ``identity``; the split comes from the table; largest face only.
- **a plain folder** (no ``--labels``): every face; no labels; the split is a deterministic
  function of the image's content hash (the same image always lands in the same split,
  wherever it lives), with fractions ``val_fraction`` / ``test_fraction``.

The result is written with ``pyarrow.dataset.write_dataset`` (hive partitioning) to a
temporary folder in OUT and renamed to ``OUT/dataset=NAME/`` (holding
``split=train/part-0.parquet`` ...), so several datasets share one manifest folder and a
reader never sees half a dataset. The schema is
:data:`~emoca_pipeline.data.schema.MANIFEST_SCHEMA` with the schema version in the file
metadata. A summary (rows kept and dropped, by reason) goes to ``OUT/_summary-NAME.json``
(pyarrow's dataset discovery ignores names starting with ``_`` and ``.``).

Rows are processed one detection shard at a time, so memory stays bounded by the label
table plus one shard.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from emoca_pipeline.data.schema import (
    MANIFEST_SCHEMA,
    SPLITS,
    check_table_metadata,
    metadata_of,
    table_metadata,
)
from emoca_pipeline.io.atomic import atomic_write_text

__all__ = [
    "AFFECTNET_CLASSES",
    "AFFECTNET_COLUMNS",
    "ManifestSettings",
    "ManifestStats",
    "ManifestSummary",
    "build_manifest",
    "csv_header",
    "read_csv_columns",
    "read_labels",
    "read_manifest",
    "stats",
]

#: AffectNet's expression classes 0-7 (8-10 are dropped).
AFFECTNET_CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger",
                     "contempt")
#: Columns of AffectNet's training.csv / validation.csv, in file order.
AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                     "facial_landmarks", "expression", "valence", "arousal")
_SYNTHETIC_COLUMNS = ("path", "split", "expression", "valence", "arousal")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Detection columns a manifest needs.
_DETECTION_COLUMNS = ["image_id", "path", "frame", "face_index", "width", "height", "bbox",
                      "score", "landmarks", "crop_transform", "status", "detector"]
#: Label table columns after :func:`read_labels` (one row per image key).
_LABEL_SCHEMA = pa.schema([
    ("key", pa.string()), ("split", pa.string()), ("expression", pa.int16()),
    ("valence", pa.float32()), ("arousal", pa.float32()), ("identity", pa.string()),
    ("keep", pa.bool_()),
])


@dataclass(frozen=True)
class ManifestSettings:
    """Split assignment.

    Attributes:
        validation_split: where AffectNet's validation.csv goes: ``"val"`` or ``"test"``.
        val_fraction: plain folders: share of images in ``val``.
        test_fraction: plain folders: share of images in ``test``.
    """

    validation_split: str = "test"
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.validation_split not in ("val", "test"):
            raise ValueError("--validation-split must be 'val' or 'test', "
                             f"got {self.validation_split!r}")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError("--val-fraction and --test-fraction must be >= 0 with a sum < 1, "
                             f"got {self.val_fraction} and {self.test_fraction}")


# --------------------------------------------------------------------------------------------
# CSV and label tables
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
    text_columns = {"subDirectory_filePath", "facial_landmarks", "path", "image_path", "file"}
    convert_options = pacsv.ConvertOptions(
        include_columns=list(columns),
        column_types={name: pa.string() for name in columns if name in text_columns},
        strings_can_be_null=True,
    )
    try:
        return pacsv.read_csv(path, read_options=read_options, convert_options=convert_options)
    except (pa.ArrowInvalid, UnicodeDecodeError) as error:
        message = " ".join(str(error).split())[:200]
        raise ValueError(f"{path}: cannot parse CSV: {message}") from None


def read_labels(
    labels: Sequence[str | os.PathLike], settings: ManifestSettings | None = None
) -> tuple[str, pa.Table, dict[str, int]]:
    """Read AffectNet CSVs or a synthetic table into one label table.

    Returns:
        ``(kind, table, counts)``: kind ``"affectnet"`` or ``"synthetic"``; a table with
        columns key, split, expression, valence, arousal, identity, keep (False for rows
        AffectNet's rules drop); counts of label rows read and dropped by reason.

    Raises:
        FileNotFoundError / ValueError: one line naming the file.
    """
    settings = settings or ManifestSettings()
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
            table = _read_affectnet(path, settings, counts)
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


def _read_affectnet(path: Path, settings: ManifestSettings, counts: dict[str, int]) -> pa.Table:
    stem = path.stem.lower()
    if "train" in stem:
        split = "train"
    elif "val" in stem:
        split = settings.validation_split
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
    valid_class = pc.fill_null(pc.and_(pc.greater_equal(expression, 0),
                                       pc.less_equal(expression, 7)), False)
    valid_va = pc.fill_null(pc.and_(
        pc.and_(pc.not_equal(valence, -2.0), pc.not_equal(arousal, -2.0)),
        pc.and_(pc.is_finite(valence), pc.is_finite(arousal))), False)
    counts["dropped_class_8_10"] += table.num_rows - (pc.sum(valid_class).as_py() or 0)
    invalid_va = pc.and_(valid_class, pc.invert(valid_va))
    counts["dropped_invalid_va"] += pc.sum(invalid_va).as_py() or 0
    return pa.Table.from_arrays([
        _normalise_keys(keys), pa.array([split] * table.num_rows, pa.string()), expression,
        valence, arousal, pa.nulls(table.num_rows, pa.string()),
        pc.and_(valid_class, valid_va),
    ], schema=_LABEL_SCHEMA)


def _read_synthetic(path: Path) -> pa.Table:
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"--labels {path}: cannot read Parquet table: {error}") from None
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
    ], schema=_LABEL_SCHEMA)


def _normalise_keys(keys: pa.ChunkedArray | pa.Array) -> pa.Array:
    """POSIX separators, no leading ``./``: the form detection keys have."""
    keys = pc.cast(keys, pa.string())
    keys = pc.replace_substring(keys, "\\", "/")
    keys = pc.replace_substring_regex(keys, r"^(\./)+", "")
    return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


@dataclass
class ManifestSummary:
    """What :func:`build_manifest` kept and dropped (``OUT/_summary-NAME.json``).

    Attributes:
        dataset: the dataset name.
        labels: ``"affectnet"``, ``"synthetic"`` or ``"none"``.
        rows: faces in the manifest.
        splits: split -> rows.
        classes: split -> class name -> rows (labelled datasets).
        detection_rows: rows read from the detection shards.
        dropped: reason -> detection rows dropped (``no_face``, ``decode_error``, ...:
            rows without a face; ``unlabelled``: a face whose image has no label;
            ``label_filtered``: its label was dropped (AffectNet classes 8-10, VA = -2);
            ``extra_faces``: faces after the first of an image with per-image labels).
        label_counts: label rows read and dropped by AffectNet's rules; ``labels_without_face``
            counts label rows no face row matched.
    """

    dataset: str
    labels: str
    rows: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    detection_rows: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    label_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        labels = "no labels" if self.labels == "none" else f"{self.labels} labels"
        lines = [f"manifest {self.dataset} ({labels}): {self.rows} faces from "
                 f"{self.detection_rows} detection rows"]
        lines.append("  splits: " + ", ".join(f"{split} {count}"
                                              for split, count in sorted(self.splits.items())))
        if self.dropped:
            lines.append("  dropped: " + ", ".join(f"{reason} {count}" for reason, count
                                                   in sorted(self.dropped.items())))
        if self.label_counts:
            lines.append("  labels: " + ", ".join(f"{reason} {count}" for reason, count
                                                  in sorted(self.label_counts.items())))
        return "\n".join(lines)


def build_manifest(
    detections: str | os.PathLike, out: str | os.PathLike, dataset: str,
    labels: Sequence[str | os.PathLike] = (), settings: ManifestSettings | None = None,
) -> ManifestSummary:
    """Join a dataset's detection shards with its labels; write ``OUT/dataset=NAME/``.

    Args:
        detections: the folder ``emoca detect`` wrote (shards + plan).
        out: the manifest folder (shared by datasets; created).
        dataset: the dataset's name (letters, digits, ``_ . -``).
        labels: AffectNet CSVs, one synthetic table, or nothing (plain folder).
        settings: split settings.

    Returns:
        the summary (also written to ``OUT/_summary-NAME.json``).

    Raises:
        FileNotFoundError / ValueError: one line naming the file or argument.
    """
    from emoca_pipeline.data.detect import load_plan, shard_path

    settings = settings or ManifestSettings()
    if not _DATASET_NAME.match(dataset):
        raise ValueError(f"--dataset {dataset!r}: use letters, digits, '_', '.' and '-' only")
    detections = Path(detections)
    if not detections.is_dir():
        raise FileNotFoundError(f"{detections}: no such detection folder")
    plan = load_plan(detections)
    shard_files = [shard_path(detections, shard) for shard in range(plan.num_shards)]
    for path in shard_files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: detection shard missing; finish `emoca detect`")
    if labels:
        kind, label_table, label_counts = read_labels(labels, settings)
    else:
        kind, label_table, label_counts = "none", None, {}
    summary = ManifestSummary(dataset, kind, label_counts=label_counts)
    label_index = None if label_table is None else _LabelIndex(label_table)

    schema = MANIFEST_SCHEMA.with_metadata(table_metadata(
        "manifest", dataset=dataset, labels=kind, detections=str(detections.absolute())))

    def batches() -> Iterator[pa.RecordBatch]:
        for path in shard_files:
            check_table_metadata(pq.read_schema(path), "detections", str(path))
            root = metadata_of(pq.read_schema(path)).get("root", plan.root)
            table = pq.read_table(path, columns=_DETECTION_COLUMNS)
            summary.detection_rows += table.num_rows
            joined = _join_shard(table, root, dataset, label_index, settings, summary)
            if joined.num_rows:
                yield from joined.to_batches()

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp-dataset={dataset}.", dir=out))
    try:
        ds.write_dataset(
            ds.Scanner.from_batches(batches(), schema=schema), temporary, format="parquet",
            partitioning=ds.partitioning(pa.schema([("dataset", pa.string()),
                                                    ("split", pa.string())]), flavor="hive"),
            basename_template="part-{i}.parquet", existing_data_behavior="error",
            preserve_order=True,
            # Dictionary encoding only where values repeat: tried on 136 floats per row it
            # fails and falls back, and made writing 3x and reading 2x slower.
            file_options=ds.ParquetFileFormat().make_write_options(
                compression="zstd", use_dictionary=["root", "detector"]),
            max_rows_per_group=65536, min_rows_per_group=8192,
        )
        if summary.rows == 0:
            raise ValueError(
                f"{detections}: no faces left for the manifest of {dataset!r} "
                f"({summary.detection_rows} detection rows; dropped: "
                + (", ".join(f"{k} {v}" for k, v in sorted(summary.dropped.items())) or "none")
                + ")")
        written = temporary / f"dataset={dataset}"
        _replace_folder(written, out / f"dataset={dataset}")
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    if label_index is not None:
        summary.label_counts["labels_without_face"] = label_index.unmatched_kept()
    atomic_write_text(out / f"_summary-{dataset}.json",
                      json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


class _LabelIndex:
    """Label rows by image key, hashed once (``pc.index_in`` would rebuild its hash table of
    every label key for each shard: 100 shards x 1M keys took 80 s)."""

    def __init__(self, labels: pa.Table) -> None:
        import pandas as pd

        self.labels = labels
        self.index = pd.Index(labels.column("key").to_numpy(zero_copy_only=False))
        self.matched = np.zeros(labels.num_rows, dtype=bool)

    def lookup(self, keys: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """``(N,)`` int64 label row of each key, -1 where there is none; marks them matched."""
        rows = self.index.get_indexer(keys.to_numpy(zero_copy_only=False))
        self.matched[rows[rows >= 0]] = True
        return rows

    def unmatched_kept(self) -> int:
        keep = self.labels.column("keep").to_numpy(zero_copy_only=False)
        return int((~self.matched & keep).sum())


def _join_shard(
    table: pa.Table, root: str, dataset: str, labels: _LabelIndex | None,
    settings: ManifestSettings, summary: ManifestSummary,
) -> pa.Table:
    status = table.column("status")
    for state, count in zip(*_value_counts(pc.filter(status, pc.not_equal(status, "ok"))),
                            strict=True):
        summary.dropped[state] = summary.dropped.get(state, 0) + count
    table = table.filter(pc.equal(status, "ok"))
    rows = table.num_rows
    if labels is None:
        split = _hash_split(table.column("image_id"), settings)
        expression = pa.nulls(rows, pa.int16())
        valence = arousal = pa.nulls(rows, pa.float32())
        identity = pa.nulls(rows, pa.string())
    else:
        first = pc.equal(table.column("face_index"), 0)
        extra = rows - (pc.sum(first).as_py() or 0)
        if extra:
            summary.dropped["extra_faces"] = summary.dropped.get("extra_faces", 0) + extra
            table = table.filter(first)
        index = labels.lookup(table.column("path"))
        has_label = index >= 0
        unlabelled = int((~has_label).sum())
        if unlabelled:
            summary.dropped["unlabelled"] = summary.dropped.get("unlabelled", 0) + unlabelled
        table = table.filter(pa.array(has_label))
        picked = labels.labels.take(pa.array(index[has_label]))
        keep = picked.column("keep")
        filtered = picked.num_rows - (pc.sum(keep).as_py() or 0)
        if filtered:
            summary.dropped["label_filtered"] = summary.dropped.get("label_filtered", 0) \
                + filtered
        table, picked = table.filter(keep), picked.filter(keep)
        split, expression = picked.column("split"), picked.column("expression")
        valence, arousal = picked.column("valence"), picked.column("arousal")
        identity = picked.column("identity")
    rows = table.num_rows
    arrays = {
        "dataset": pa.array([dataset] * rows, pa.string()),
        "split": split,
        "root": pa.array([root] * rows, pa.string()),
        "expression": expression, "valence": valence, "arousal": arousal, "identity": identity,
    }
    columns = [arrays[f.name] if f.name in arrays else table.column(f.name)
               for f in MANIFEST_SCHEMA]
    joined = pa.Table.from_arrays(columns, schema=MANIFEST_SCHEMA)
    _count(summary, joined)
    return joined


def _value_counts(values: pa.ChunkedArray | pa.Array) -> tuple[list[str], list[int]]:
    counts = pc.value_counts(values)
    return (counts.field("values").to_pylist(), counts.field("counts").to_pylist()) \
        if len(counts) else ([], [])


def _count(summary: ManifestSummary, joined: pa.Table) -> None:
    summary.rows += joined.num_rows
    for split, count in zip(*_value_counts(joined.column("split")), strict=True):
        summary.splits[split] = summary.splits.get(split, 0) + count
    if joined.column("expression").null_count == joined.num_rows:
        return
    grouped = joined.group_by(["split", "expression"]).aggregate([("expression", "count")])
    for split, expression, count in zip(grouped.column("split").to_pylist(),
                                        grouped.column("expression").to_pylist(),
                                        grouped.column("expression_count").to_pylist(),
                                        strict=True):
        name = _class_name(expression)
        per_split = summary.classes.setdefault(split, {})
        per_split[name] = per_split.get(name, 0) + count


def _class_name(expression: int | None) -> str:
    if expression is None:
        return "unlabelled"
    if 0 <= expression < len(AFFECTNET_CLASSES):
        return AFFECTNET_CLASSES[expression]
    return str(expression)


def _hash_split(image_ids: pa.ChunkedArray | pa.Array, settings: ManifestSettings) -> pa.Array:
    """train/val/test from the image's content hash (hex): uniform and reproducible."""
    ids = image_ids.to_pylist()
    unit = np.array([int(value[:13], 16) for value in ids], dtype=np.float64) / 16.0 ** 13
    test = unit < settings.test_fraction
    val = ~test & (unit < settings.test_fraction + settings.val_fraction)
    names = np.where(test, "test", np.where(val, "val", "train"))
    return pa.array(names.tolist(), pa.string())


def _replace_folder(new: Path, target: Path) -> None:
    """Move ``new`` onto ``target``; an old ``target`` is moved aside first, then deleted."""
    if not new.is_dir():
        new.mkdir(parents=True)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}.", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _open_manifest(manifest_dir: str | os.PathLike) -> ds.Dataset:
    path = Path(manifest_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such manifest folder")
    partitioning = ds.partitioning(pa.schema([("dataset", pa.string()), ("split", pa.string())]),
                                   flavor="hive")
    dataset = ds.dataset(path, format="parquet", partitioning=partitioning)
    if not dataset.files:
        raise ValueError(f"{path}: manifest folder holds no dataset=NAME/split=... files")
    check_table_metadata(pq.read_schema(dataset.files[0]), "manifest", dataset.files[0])
    return dataset


def read_manifest(
    manifest_dir: str | os.PathLike, dataset: str | None = None, split: str | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Rows of a manifest folder, optionally of one dataset and/or split, in written order."""
    source = _open_manifest(manifest_dir)
    condition = None
    for name, value in (("dataset", dataset), ("split", split)):
        if value is not None:
            term = ds.field(name) == value
            condition = term if condition is None else condition & term
    names = list(columns) if columns else MANIFEST_SCHEMA.names
    table = source.to_table(columns=names, filter=condition)
    return table.cast(pa.schema([MANIFEST_SCHEMA.field(name) for name in names]))


@dataclass
class ManifestStats:
    """Faces per dataset, split and expression class.

    Attributes:
        counts: dataset -> split -> class name -> faces (``"unlabelled"`` for rows without
            an expression).
    """

    counts: dict[str, dict[str, dict[str, int]]]

    def total(self, dataset: str | None = None, split: str | None = None) -> int:
        return sum(count for name, splits in self.counts.items()
                   if dataset in (None, name)
                   for split_name, classes in splits.items() if split in (None, split_name)
                   for count in classes.values())

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total(), "counts": self.counts}

    def format(self) -> str:
        """A table: one line per dataset and split, one column per class."""
        classes = [name for name in (*AFFECTNET_CLASSES, "unlabelled")
                   if any(name in per_class for splits in self.counts.values()
                          for per_class in splits.values())]
        header = f"{'dataset':<16} {'split':<6} {'faces':>8}" + "".join(
            f" {name:>10}" for name in classes)
        lines = [header]
        for dataset, splits in sorted(self.counts.items()):
            for split in sorted(splits, key=lambda s: (SPLITS + (s,)).index(s)):
                per_class = splits[split]
                lines.append(f"{dataset:<16} {split:<6} {sum(per_class.values()):>8}" + "".join(
                    f" {per_class.get(name, 0):>10}" for name in classes))
        lines.append(f"{'total':<23} {self.total():>8}")
        return "\n".join(lines)


def stats(manifest_dir: str | os.PathLike) -> ManifestStats:
    """Counts per dataset, split and class of a manifest folder."""
    table = _open_manifest(manifest_dir).to_table(columns=["dataset", "split", "expression"])
    counts: dict[str, dict[str, dict[str, int]]] = {}
    if table.num_rows:
        table = table.cast(pa.schema([("dataset", pa.string()), ("split", pa.string()),
                                      ("expression", pa.int16())]))
        grouped = table.group_by(["dataset", "split", "expression"], use_threads=False) \
            .aggregate([([], "count_all")])
        for dataset, split, expression, count in zip(
                grouped.column("dataset").to_pylist(), grouped.column("split").to_pylist(),
                grouped.column("expression").to_pylist(), grouped.column("count_all").to_pylist(),
                strict=True):
            per_class = counts.setdefault(dataset, {}).setdefault(split, {})
            name = _class_name(expression)
            per_class[name] = per_class.get(name, 0) + count
    return ManifestStats(counts)
