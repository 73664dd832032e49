"""The manifest: detections joined with labels and splits, as a partitioned Parquet dataset.

``emoca manifest build DETECTIONS OUT --dataset NAME [--labels FILE ...]`` reads the
detection shards of one dataset (see :mod:`emoca_pipeline.data.detect`), keeps the faces
(status ``ok``), joins them on ``path`` with the labels (read by
:func:`emoca_pipeline.data.labels.read_labels`) and assigns splits:

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

from emoca_pipeline.data.affectnet import AFFECTNET_CLASSES, affectnet_class_name
from emoca_pipeline.data.labels import read_labels
from emoca_pipeline.data.plan import load_plan, shard_path
from emoca_pipeline.data.schema import (
    MANIFEST_SCHEMA,
    SPLITS,
    check_table_metadata,
    metadata_of,
    table_metadata,
)
from emoca_pipeline.io.atomic import atomic_write_text

__all__ = [
    "ManifestSettings",
    "ManifestStats",
    "ManifestSummary",
    "build_manifest",
    "read_manifest",
    "stats",
]

_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Detection columns a manifest needs.
_DETECTION_COLUMNS = ["image_id", "path", "frame", "face_index", "width", "height", "bbox",
                      "score", "landmarks", "crop_transform", "status", "detector"]


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
        kind, label_table, label_counts = read_labels(labels, settings.validation_split)
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
        name = affectnet_class_name(expression)
        per_split = summary.classes.setdefault(split, {})
        per_split[name] = per_split.get(name, 0) + count


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
            name = affectnet_class_name(expression)
            per_class[name] = per_class.get(name, 0) + count
    return ManifestStats(counts)
