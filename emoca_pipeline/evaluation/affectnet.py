"""Emotion recognised from reconstructed codes: the EMOCA paper's AffectNet protocol.

For each reconstruction model: its codes (``shape``, ``exp``, ``pose``; one face per image,
the ok row with the lowest ``face_index``) with the images' labels form a table with
train / val / test splits; an EmoMLP is trained on the train split, early-stopped on val
(``emoca train emotion``'s job, so the same settings file, MLflow tracking and outputs),
and predicts the test split; the paper-format emotion table
(:mod:`emoca_pipeline.evaluation.emotion_table`) compares the models on the test images
every model reconstructed.

``emoca eval affectnet --train NAME=DIR ... --test NAME=DIR ...``: DIR is an
``emoca reconstruct`` output folder. When a model's train and test folders are the same
folder (the workflow reconstructs the whole AffectNet manifest once per model), the
``split`` column passed through from the manifest chooses the rows: ``train`` and ``val``
train, ``test`` (AffectNet's validation set) tests. Separate folders are used whole (the
reconstructions of the train and of the test manifest). Train rows whose split is ``val``
are the validation set; without any, a fixed tenth of the train images (by a hash of their
``image_id``) is. Writes under OUT: ``codes/<NAME>.parquet``, ``emomlp/<NAME>/``
(model.pt, predictions.parquet, training.json; each an MLflow run nested under
``parent_run_id`` when given) and the table ``affectnet_table.{csv,md,tex,json}`` with
``affectnet_confusion_matrices.png``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emoca_pipeline.io.atomic import atomic_output

__all__ = [
    "CODE_COLUMNS",
    "code_matrix",
    "evaluate_affectnet",
    "first_faces",
    "read_reconstruction_table",
    "train_emotion_on_codes",
]

log = logging.getLogger(__name__)

#: The codes the EmoMLP reads (jaw = pose[3:6]).
CODE_COLUMNS = ("shape", "exp", "pose")
LABELS = ("expression", "valence", "arousal")
VAL_SHARE = 0.1
#: Splits of one folder holding every split (the manifest's names) -> role.
TRAIN_SPLITS, TEST_SPLITS = ("train", "val"), ("test",)
#: Output names in OUT.
TABLE_STEM = "affectnet_table"
CONFUSION_FILE = "affectnet_confusion_matrices.png"


def read_reconstruction_table(folder: str | os.PathLike,
                              columns: Sequence[str] | None = None) -> pa.Table:
    """All shards of an ``emoca reconstruct`` output folder (the columns asked for that
    exist). Raises FileNotFoundError / ValueError naming the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such reconstruction folder")
    try:
        from emoca_pipeline.inference import read_reconstructions
    except ImportError:  # the inference package is optional for reading finished shards
        read_reconstructions = None
    files = sorted(folder.glob("shard-*-of-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no reconstruction shards (shard-*-of-*.parquet)")
    names = pq.read_schema(files[0]).names
    wanted = [c for c in columns if c in names] if columns is not None else None
    if read_reconstructions is not None:
        return read_reconstructions(folder, columns=wanted)
    try:
        return pa.concat_tables(pq.read_table(f, columns=wanted) for f in files)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{folder}: cannot read the shards ({error})") from error


def code_matrix(table: pa.Table, name: str, source: str | os.PathLike) -> np.ndarray:
    """A fixed-size list column -> (N, W) float64; ValueError naming ``source`` when it is
    missing, ragged or not finite."""
    if name not in table.column_names:
        raise ValueError(f"{source}: no column {name!r}")
    column = table.column(name).combine_chunks()
    if column.null_count:
        raise ValueError(f"{source}: column {name!r} has {column.null_count} null row(s)")
    kind = column.type
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
    else:
        lengths = np.asarray(column.value_lengths())
        if lengths.size and (lengths != lengths[0]).any():
            raise ValueError(f"{source}: column {name!r} has rows of different lengths")
        width = int(lengths[0]) if lengths.size else 0
    values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    values = values.reshape(len(column), width)
    if not np.isfinite(values).all():
        raise ValueError(f"{source}: column {name!r} has NaN or infinite values on ok rows")
    return values


def first_faces(table: pa.Table) -> pa.Table:
    """The ok rows, one per ``image_id`` (the lowest ``face_index``), sorted by image_id."""
    ids = table.column("image_id").to_pylist()
    status = (table.column("status").to_pylist() if "status" in table.column_names
              else ["ok"] * table.num_rows)
    faces = (table.column("face_index").to_pylist() if "face_index" in table.column_names
             else [0] * table.num_rows)
    best: dict[str, tuple[int, int]] = {}
    for row, (key, state, face) in enumerate(zip(ids, status, faces, strict=True)):
        if state != "ok" or key is None:
            continue
        rank = face if face is not None else 0
        if key not in best or rank < best[key][0]:
            best[key] = (rank, row)
    order = sorted(best)
    return table.take(pa.array([best[key][1] for key in order], type=pa.int64()))


def _codes_table(image_ids: Sequence[str], splits: Sequence[str], labels: Mapping[str, np.ndarray],
                 codes: Mapping[str, np.ndarray]) -> pa.Table:
    columns = {"image_id": pa.array(list(image_ids), pa.string()),
               "split": pa.array(list(splits), pa.string()),
               "expression": pa.array(np.asarray(labels["expression"]).astype(np.int64)),
               "valence": pa.array(np.asarray(labels["valence"], dtype=np.float32)),
               "arousal": pa.array(np.asarray(labels["arousal"], dtype=np.float32))}
    for name in CODE_COLUMNS:
        values = np.asarray(codes[name], dtype=np.float32)
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)),
                                                          values.shape[1])
    return pa.table(columns)


def train_emotion_on_codes(name: str, image_ids: Sequence[str], splits: Sequence[str],
                           labels: Mapping[str, np.ndarray], codes: Mapping[str, np.ndarray],
                           config: str | os.PathLike, out_dir: str | os.PathLike,
                           tracking_uri: str | None = None,
                           results_dir: str | os.PathLike = "results",
                           experiment: str | None = None,
                           parent_run_id: str | None = None) -> Path:
    """Train an EmoMLP on one model's codes; returns its test predictions file.

    Args:
        name: the model's name (a table row, the MLflow run name).
        image_ids, splits: (N,) keys and "train" / "val" / "test".
        labels: expression (N,), valence (N,), arousal (N,).
        codes: shape (N, n_shape), exp (N, n_exp), pose (N, 6).
        config: the EmoMLP training settings (YAML, e.g. config/emotion_mlp.yaml).
        out_dir: writes ``codes/<name>.parquet`` and ``emomlp/<name>/``.
        tracking_uri, results_dir, experiment, parent_run_id: the EmoMLP's MLflow run
            (``emoca train emotion``'s; e.g. nested under the evaluation's run).
    """
    from emoca_pipeline.training.emotion_job import train_emotion

    out = Path(out_dir)
    table_path = out / "codes" / f"{name}.parquet"
    with atomic_output(table_path) as tmp:
        pq.write_table(_codes_table(image_ids, splits, labels, codes), tmp)
    result = train_emotion(config, table_path, out / "emomlp" / name, "codes",
                           tracking_uri=tracking_uri, results_dir=results_dir,
                           experiment=experiment, run_name=name, parent_run_id=parent_run_id)
    return Path(result.predictions_path)


def _labels(table: pa.Table, source: Path) -> dict[str, np.ndarray]:
    missing = [name for name in LABELS if name not in table.column_names]
    if missing:
        raise ValueError(f"{source}: no label column(s) {', '.join(missing)} (reconstruct "
                         "the labelled manifest, whose labels pass through)")
    return {name: table.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy()
            for name in LABELS}


def _val_by_hash(image_id: str) -> bool:
    digest = hashlib.sha256(image_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2 ** 32 < VAL_SHARE


def _labelled_faces(folder: Path) -> pa.Table:
    """One ok row per image of a reconstruction folder, with valid AffectNet labels."""
    from emoca_pipeline.data.affectnet import filter_affectnet_labels

    wanted = ["image_id", "status", "face_index", "split", *LABELS, *CODE_COLUMNS]
    table = first_faces(read_reconstruction_table(folder, wanted))
    labels = _labels(table, folder)
    return table.filter(pa.array(filter_affectnet_labels(labels["expression"], labels["valence"],
                                                         labels["arousal"])))


def _train_and_test(train: Path, test: Path) -> tuple[pa.Table, pa.Table]:
    """A model's (train, test) rows: by the ``split`` column when both are one folder, else
    each folder whole. Raises ValueError naming the folder when a part is empty."""
    if train.resolve() == test.resolve():
        table = _labelled_faces(train)
        if "split" not in table.column_names:
            raise ValueError(f"{train}: no split column, so --train and --test cannot both be "
                             "this folder (reconstruct the manifest, whose split passes "
                             "through, or give separate train and test folders)")
        split = table.column("split")
        parts = (table.filter(pc.is_in(split, value_set=pa.array(TRAIN_SPLITS))),
                 table.filter(pc.is_in(split, value_set=pa.array(TEST_SPLITS))))
        for part, names in zip(parts, (TRAIN_SPLITS, TEST_SPLITS), strict=True):
            if part.num_rows == 0:
                raise ValueError(f"{train}: no ok rows with valid AffectNet labels and split "
                                 f"{' or '.join(names)} (given as both --train and --test)")
        return parts
    parts = (_labelled_faces(train), _labelled_faces(test))
    for part, folder in zip(parts, (train, test), strict=True):
        if part.num_rows == 0:
            raise ValueError(f"{folder}: no ok rows with valid AffectNet labels")
    return parts


def evaluate_affectnet(train: Mapping[str, str | os.PathLike],
                       test: Mapping[str, str | os.PathLike], config: str | os.PathLike,
                       out_dir: str | os.PathLike, tracking_uri: str | None = None,
                       results_dir: str | os.PathLike = "results",
                       experiment: str | None = None, parent_run_id: str | None = None):
    """The AffectNet protocol for each model NAME in both ``train`` and ``test`` (NAME ->
    reconstruction folder; the same folder for both selects rows by split, see the module
    docstring); returns :class:`~emoca_pipeline.evaluation.emotion_table.EmotionEvaluation`
    (``affectnet_table.*``). Models are compared on the test images all of them
    reconstructed. ``tracking_uri``, ``results_dir``, ``experiment`` and ``parent_run_id``
    are the EmoMLP runs' (:func:`train_emotion_on_codes`)."""
    from emoca_pipeline.evaluation.emotion_table import evaluate_emotion

    if not train:
        raise ValueError("train: give at least one NAME=DIR")
    if set(train) != set(test):
        raise ValueError(f"train and test name different models: {sorted(train)} vs "
                         f"{sorted(test)}")
    loaded = {}
    for name in train:
        train_dir, test_dir = Path(train[name]), Path(test[name])
        train_rows, test_rows = _train_and_test(train_dir, test_dir)
        loaded[name] = [("train", train_dir, train_rows), ("test", test_dir, test_rows)]
    common_test = set.intersection(*(set(parts[1][2].column("image_id").to_pylist())
                                     for parts in loaded.values()))
    if not common_test:
        raise ValueError("test: the models have no reconstructed test image in common")
    files = []
    for name, parts in loaded.items():
        ids, splits, labels, codes = [], [], {k: [] for k in LABELS}, {k: [] for k in
                                                                         CODE_COLUMNS}
        for role, folder, table in parts:
            keys = table.column("image_id").to_pylist()
            if role == "test":
                keep = np.array([key in common_test for key in keys])
                dropped = int((~keep).sum())
                if dropped:
                    log.info("%s: %d test images not reconstructed by every model left out",
                             folder, dropped)
                table = table.filter(pa.array(keep))
                keys = table.column("image_id").to_pylist()
                role_splits = ["test"] * len(keys)
            else:
                given = (table.column("split").to_pylist() if "split" in table.column_names
                         else [None] * len(keys))
                has_val = any(s == "val" for s in given)
                role_splits = [("val" if (s == "val" if has_val else _val_by_hash(k))
                                else "train") for k, s in zip(keys, given, strict=True)]
            ids += keys
            splits += role_splits
            for key, values in _labels(table, folder).items():
                labels[key].append(values)
            for key in CODE_COLUMNS:
                codes[key].append(code_matrix(table, key, folder))
        files.append(train_emotion_on_codes(
            name, ids, splits, {k: np.concatenate(v) for k, v in labels.items()},
            {k: np.concatenate(v) for k, v in codes.items()}, config, out_dir,
            tracking_uri=tracking_uri, results_dir=results_dir, experiment=experiment,
            parent_run_id=parent_run_id))
    return evaluate_emotion(files, out_dir, stem=TABLE_STEM, metrics_file=f"{TABLE_STEM}.json",
                            confusion_file=CONFUSION_FILE)
