"""The emotion networks' data: a labelled Parquet table as Lightning batches.

:class:`EmotionDataModule` reads a Parquet table (a file, or a folder of Parquet files such
as the hive-partitioned manifest) with labels ``expression`` (0..7, AffectNet order),
``valence``, ``arousal``, a ``split`` column (train/val/test) and an image key
(``image_id``), and serves either

- ``input="codes"``: FLAME codes from the columns ``shape`` (N, 100), ``exp`` (N, 50) and
  ``pose`` (N, 6; jaw = pose[3:6]), taken from the table itself (ground truth, e.g. the
  synthetic dataset) or from a second Parquet of codes joined on the key (e.g. EMOCA's
  inference output, which uses the same column names); or
- ``input="images"``: the image at ``path`` (relative to the table's folder, or to a
  ``root`` column when there is one), cropped from its 68 ``landmarks`` as DECA/EMOCA do
  (:mod:`emoca_pipeline.data.crop`) to ``image_size`` x ``image_size`` RGB in [0, 1].

Rows with labels AffectNet drops (classes 8-10, valence/arousal -2, nulls) are filtered
out; rows with a ``status`` column other than "ok" too. Training batches are drawn with a
class-balanced ``WeightedRandomSampler`` (with replacement, one epoch = as many samples as
the training split has).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from emoca_pipeline.data.crop import crop_box_from_landmarks, crop_transform, warp_crop
from emoca_pipeline.data.schema import SPLITS, fixed_list_values
from emoca_pipeline.io.images import read_image
from emoca_pipeline.losses.emotion import class_balanced_weights
from emoca_pipeline.models.emotion import (
    AFFECTNET_CLASSES,
    INPUT_KINDS,
    EmoMLPSettings,
    filter_affectnet_labels,
)

__all__ = ["EmotionDataModule", "EmotionLabels", "InputKind"]

InputKind = Literal["codes", "images"]


class EmotionLabels(NamedTuple):
    """Keys and labels of N rows of an :class:`EmotionDataModule`.

    keys: (N,) image keys (str). splits: (N,) split names (None without a split column).
    expression: (N,) float64 class, NaN where missing. valence, arousal: (N,) float32, NaN
    where missing.
    """

    keys: np.ndarray
    splits: np.ndarray
    expression: np.ndarray
    valence: np.ndarray
    arousal: np.ndarray


# ---------------------------------------------------------------------------------------
# Reading tables


def _open_dataset(path: Path) -> ds.Dataset:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such Parquet table")
    try:
        return ds.dataset(str(path), format="parquet", partitioning="hive")
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a Parquet table ({' '.join(str(error).split())})") \
            from error


def _read_columns(path: Path, dataset: ds.Dataset, columns: Sequence[str]) -> pa.Table:
    missing = [name for name in columns if name not in dataset.schema.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    try:
        return dataset.to_table(columns=list(columns))
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: cannot read ({' '.join(str(error).split())})") from error


def _strings(column: pa.ChunkedArray) -> np.ndarray:
    """A string (or dictionary-of-string) column -> (N,) object array, None for nulls."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return np.asarray(column.to_pylist(), dtype=object)


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """A numeric column -> (N,) float64 with NaN for nulls."""
    return column.cast(pa.float64()).fill_null(float("nan")).to_numpy()


def _matrix(path: Path, table: pa.Table, name: str, width: int) -> np.ndarray:
    """A list column with ``width`` finite numbers per row -> (N, width) float32."""
    return fixed_list_values(table.column(name), width, source=str(path), name=name,
                             finite=True)


# ---------------------------------------------------------------------------------------
# Datasets


class _CodesDataset(Dataset):
    """Rows of in-memory codes and labels; items are dicts of tensors (see the data module)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], indices: np.ndarray) -> None:
        self.tensors = {name: torch.from_numpy(values[indices]) for name, values in arrays.items()}
        self.length = len(indices)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return {name: values[item] for name, values in self.tensors.items()}


class _ImageCropDataset(Dataset):
    """Decodes an image and crops it from its landmarks -> ``image`` (3, S, S) in [0, 1]."""

    def __init__(self, arrays: Mapping[str, np.ndarray], paths: np.ndarray,
                 landmarks: np.ndarray, indices: np.ndarray, image_size: int) -> None:
        self.labels = {name: torch.from_numpy(values[indices]) for name, values in arrays.items()}
        self.paths = paths[indices]
        self.landmarks = landmarks[indices]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        path = self.paths[item]
        decoded = read_image(path)
        if not decoded.ok:
            raise ValueError(f"{path}: cannot read image ({decoded.status_line})")
        try:
            box = crop_box_from_landmarks(self.landmarks[item])
        except ValueError as error:
            raise ValueError(f"{path}: no crop from its landmarks ({error})") from error
        transform = crop_transform(box.center, box.size, self.image_size)
        crop = warp_crop(decoded.image, transform, self.image_size)
        sample = {name: values[item] for name, values in self.labels.items()}
        sample["image"] = torch.from_numpy(crop).permute(2, 0, 1).float().div_(255.0)
        return sample


class EmotionDataModule(pl.LightningDataModule):
    """A labelled Parquet table as training / validation / test batches.

    Args:
        table: the table: a Parquet file or a folder of Parquet files.
        input: "codes" or "images" (see the module docstring).
        batch_size: training batch size. eval_batch_size: validation/test batch size.
        balanced_sampling: class-balanced sampling of training batches (else shuffling).
        num_workers: DataLoader worker processes.
        image_size: crop side for ``input="images"``.
        codes_table: optional Parquet of codes joined on ``key_column`` (``input="codes"``);
            default: the codes of ``table`` itself.
        key_column: the image key (unique per row of ``codes_table``).
        mlp_settings: code sizes (shape_dim, exp_dim) to expect.
        seed: seed of the training sampler.
        require_labels: False for inference on unlabelled data: rows are then kept whatever
            their labels, which are NaN (class -1) where missing.

    Batches are dicts of tensors: ``index`` (B,) row numbers (their keys and labels:
    :meth:`labels`); ``expression`` (B,) int64, ``valence`` and ``arousal`` (B,) float32;
    codes ``shape`` (B, 100), ``exp`` (B, 50), ``jaw`` (B, 3) or ``image`` (B, 3, S, S).
    """

    def __init__(
        self,
        table: str | os.PathLike,
        input: InputKind,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        balanced_sampling: bool = True,
        num_workers: int = 0,
        image_size: int = 224,
        codes_table: str | os.PathLike | None = None,
        key_column: str = "image_id",
        mlp_settings: EmoMLPSettings | None = None,
        seed: int = 0,
        require_labels: bool = True,
    ) -> None:
        super().__init__()
        if input not in INPUT_KINDS:
            raise ValueError(f"input: expected 'codes' or 'images', got {input!r}")
        if codes_table is not None and input != "codes":
            raise ValueError("codes_table: only used with input='codes'")
        self.table = Path(table)
        self.input = input
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.balanced_sampling = balanced_sampling
        self.num_workers = num_workers
        self.image_size = image_size
        self.codes_table = Path(codes_table) if codes_table is not None else None
        self.key_column = key_column
        self.mlp_settings = mlp_settings or EmoMLPSettings()
        self.seed = seed
        self.require_labels = require_labels
        self._loaded = False

    # -- reading ------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Read the table once (later calls do nothing)."""
        if self._loaded:
            return
        dataset = _open_dataset(self.table)
        names = dataset.schema.names
        labels = ("expression", "valence", "arousal")
        has_labels = all(name in names for name in labels)
        if self.require_labels and not has_labels:
            missing = [name for name in labels if name not in names]
            raise ValueError(f"{self.table}: missing label column(s) {', '.join(missing)}")
        wanted = [self.key_column]
        wanted += [name for name in ("split", "status", "root") if name in names]
        wanted += list(labels) if has_labels else []
        if self.input == "codes" and self.codes_table is None:
            wanted += ["shape", "exp", "pose"]
        if self.input == "images":
            wanted += ["path", "landmarks"]
        table = _read_columns(self.table, dataset, wanted)

        keep = np.ones(table.num_rows, dtype=bool)
        if "status" in table.column_names:
            keep &= _strings(table.column("status")) == "ok"
        n = table.num_rows
        if has_labels:
            expression = _floats(table.column("expression"))
            valence = _floats(table.column("valence"))
            arousal = _floats(table.column("arousal"))
            if self.require_labels:
                keep &= filter_affectnet_labels(expression, valence, arousal)
        else:
            expression = valence = arousal = np.full(n, np.nan)
        self.dropped = int((~keep).sum())
        if not keep.any():
            raise ValueError(f"{self.table}: no usable rows (all {n} have invalid labels or a "
                             "status other than ok)")
        table = table.filter(pa.array(keep))
        expression, valence, arousal = expression[keep], valence[keep], arousal[keep]

        keys = _strings(table.column(self.key_column))
        if any(key is None for key in keys):
            raise ValueError(f"{self.table}: column {self.key_column!r} has null values")
        self.keys = keys
        self.splits = (_strings(table.column("split")) if "split" in table.column_names
                       else np.full(len(keys), None, dtype=object))
        class_labels = np.where(np.isfinite(expression), expression, -1).astype(np.int64)
        self._arrays: dict[str, np.ndarray] = {
            "index": np.arange(len(keys), dtype=np.int64),
            "expression": class_labels,
            "valence": valence.astype(np.float32),
            "arousal": arousal.astype(np.float32),
        }
        if self.input == "codes":
            codes = table if self.codes_table is None else self._joined_codes(keys)
            source = self.table if self.codes_table is None else self.codes_table
            s = self.mlp_settings
            pose = _matrix(source, codes, "pose", 6)
            self._arrays["shape"] = _matrix(source, codes, "shape", s.shape_dim)
            self._arrays["exp"] = _matrix(source, codes, "exp", s.exp_dim)
            self._arrays["jaw"] = np.ascontiguousarray(pose[:, 3:6])
        else:
            landmarks = _matrix(self.table, table, "landmarks", 136).reshape(-1, 68, 2)
            self._landmarks = landmarks
            self._paths = self._image_paths(table)
        self._loaded = True

    def _joined_codes(self, keys: np.ndarray) -> pa.Table:
        """The codes table's rows in the order of ``keys``."""
        assert self.codes_table is not None
        source = self.codes_table
        dataset = _open_dataset(source)
        codes = _read_columns(source, dataset, [self.key_column, "shape", "exp", "pose"])
        code_keys = _strings(codes.column(self.key_column))
        position = {key: i for i, key in enumerate(code_keys)}
        if len(position) != len(code_keys):
            raise ValueError(f"{source}: column {self.key_column!r} has duplicate keys")
        rows = np.array([position.get(key, -1) for key in keys], dtype=np.int64)
        if (rows < 0).any():
            missing = keys[rows < 0]
            raise ValueError(f"{source}: no codes for {len(missing)} of {len(keys)} rows of "
                             f"{self.table} (e.g. {self.key_column} {missing[0]!r})")
        return codes.take(pa.array(rows))

    def _image_paths(self, table: pa.Table) -> np.ndarray:
        relative = _strings(table.column("path"))
        if "root" in table.column_names:
            roots = _strings(table.column("root"))
        else:
            base = self.table if self.table.is_dir() else self.table.parent
            roots = np.full(len(relative), str(base), dtype=object)
        if any(p is None for p in relative) or any(r is None for r in roots):
            raise ValueError(f"{self.table}: null values in column 'path' or 'root'")
        paths = np.array([str(Path(root, rel)) for root, rel in zip(roots, relative, strict=True)],
                         dtype=object)
        # Fail fast on the common mistake (a wrong root) without touching every file.
        if len(paths) and not Path(paths[0]).is_file():
            raise FileNotFoundError(
                f"{self.table}: image {paths[0]} not found (column 'path' {relative[0]!r} is "
                f"relative to {'its root column' if 'root' in table.column_names else roots[0]})"
            )
        return paths

    # -- subsets ------------------------------------------------------------------------

    def indices(self, split: str) -> np.ndarray:
        """Row numbers of a split ("train", "val", "test"; "all" for every row)."""
        self.setup()
        if split == "all":
            return np.arange(len(self.keys))
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {', '.join(SPLITS)} or 'all', got {split!r}")
        return np.flatnonzero(self.splits == split)

    def dataset(self, split: str) -> Dataset:
        """The rows of ``split`` as a Dataset of dicts (see the class docstring)."""
        rows = self.indices(split)
        if rows.size == 0:
            raise ValueError(f"{self.table}: no usable rows in split {split!r}")
        if self.input == "codes":
            return _CodesDataset(self._arrays, rows)
        return _ImageCropDataset(self._arrays, self._paths, self._landmarks, rows,
                                 self.image_size)

    def dataloader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """An in-order loader over ``split`` (for evaluation and inference)."""
        return DataLoader(
            self.dataset(split), batch_size=batch_size or self.eval_batch_size, shuffle=False,
            num_workers=self.num_workers, persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        generator = torch.Generator().manual_seed(self.seed)
        if self.balanced_sampling:
            labels = self._arrays["expression"][self.indices("train")]
            sampler = WeightedRandomSampler(
                class_balanced_weights(labels, len(AFFECTNET_CLASSES)),
                num_samples=len(dataset), replacement=True, generator=generator,
            )
            shuffle = None
        else:
            sampler, shuffle = None, True
        # BatchNorm and the batch PCC/CCC need >= 2 samples: drop a short last batch.
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, shuffle=shuffle,
            generator=None if sampler is not None else generator,
            drop_last=len(dataset) > self.batch_size, num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def labels(self, rows: np.ndarray | None = None) -> EmotionLabels:
        """Keys and labels of ``rows`` (row numbers, e.g. a batch's ``index``; default:
        every row)."""
        self.setup()
        rows = np.arange(len(self.keys)) if rows is None else np.asarray(rows)
        expression = self._arrays["expression"][rows].astype(np.float64)
        expression[expression < 0] = np.nan
        return EmotionLabels(self.keys[rows], self.splits[rows], expression,
                             self._arrays["valence"][rows], self._arrays["arousal"][rows])

    def codes(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``input="codes"``: the codes of ``rows`` (default: every row): ``shape`` (N, 100),
        ``exp`` (N, 50), ``jaw`` (N, 3), float32."""
        self.setup()
        if self.input != "codes":
            raise ValueError("codes: this data module serves images (input='images')")
        rows = np.arange(len(self.keys)) if rows is None else np.asarray(rows)
        return {name: self._arrays[name][rows] for name in ("shape", "exp", "jaw")}

    def split_sizes(self) -> dict[str, int]:
        """Usable rows per split, and rows dropped for their labels or status."""
        sizes = {split: int(self.indices(split).size) for split in SPLITS}
        sizes["dropped"] = self.dropped
        return sizes


