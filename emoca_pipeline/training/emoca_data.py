"""EMOCA's training data: face crops from a Parquet table or a manifest as Lightning batches.

Two sources (:class:`EmocaDataModule`):

* a Parquet table with ``path`` (relative to the table's folder, or to a ``root`` column),
  ``identity``, ``split`` and 68 ``landmarks`` (x, y pixels of the photo), e.g. the
  synthetic table; crops from the landmarks (EMOCA's rule);
* a manifest folder of ``emoca manifest build`` (the whole folder or one ``dataset=NAME``
  folder; hive-partitioned Parquet, :data:`~emoca_pipeline.data.schema.MANIFEST_SCHEMA`):
  crops from each row's stored ``crop_transform`` (original -> 224 px), rescaled to the
  model's image size.

Optional columns: ``mediapipe_landmarks`` (the 478 MediaPipe points, x, y interleaved,
moved into the crop's [-1, 1] frame like the 68 landmarks; EMOCA v2's losses) and
``seg_mask`` (path of a face-segmentation image of the photo, relative to the root;
warped with the crop, > 0.5 = face: the DECA stage's photometric mask). Ground-truth codes
(``shape``, ``exp``, ``pose`` and the photo's ``cam``, with ``width`` and ``height``) come
from the table itself or, for a manifest, from ``codes_table`` joined on ``image_id``; they
feed the synthetic-assist terms and the ``exp_error`` metric; the camera is moved into each
crop's frame with :func:`crop_camera`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from emoca_pipeline.data.crop import (
    CropSettings,
    crop_box_from_landmarks,
    crop_transform,
    transform_points,
    warp_crop,
)
from emoca_pipeline.data.schema import MEDIAPIPE_POINTS, check_table_metadata, fixed_list_values
from emoca_pipeline.models.emoca import Stage
from emoca_pipeline.training.emoca_settings import EmocaTrainingSettings

__all__ = ["GROUND_TRUTH_COLUMNS", "EmocaDataModule", "IdentityBatchSampler", "crop_camera",
           "crop_boxes_from_transforms"]

#: Ground-truth columns of the synthetic table.
GROUND_TRUTH_COLUMNS = ("shape", "exp", "pose", "cam")

#: The side of the crop a manifest's ``crop_transform`` maps to.
MANIFEST_CROP_SIZE = CropSettings().out_size


def crop_boxes_from_transforms(transforms: np.ndarray, out_size: int = MANIFEST_CROP_SIZE
                               ) -> tuple[np.ndarray, np.ndarray]:
    """The crop squares of stored crop transforms (the inverse of
    :func:`~emoca_pipeline.data.crop.crop_transform`).

    Args:
        transforms: (N, 9) or (N, 3, 3) original -> ``out_size`` crop similarities without
            rotation.

    Returns:
        centres (N, 2) and sides (N,) in original pixels.

    Raises:
        ValueError: a transform with rotation, unequal scales or a scale <= 0.
    """
    matrix = np.asarray(transforms, dtype=np.float64).reshape(-1, 3, 3)
    k = matrix[:, 0, 0]
    bad = ((np.abs(matrix[:, 0, 1]) > 1e-9) | (np.abs(matrix[:, 1, 0]) > 1e-9)
           | (np.abs(matrix[:, 1, 1] - k) > 1e-9 * np.abs(k)) | ~(k > 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"crop_transform of row {row}: expected a scale-and-shift similarity, "
                         f"got {matrix[row].tolist()}")
    side = (out_size - 1) / k
    corner = -matrix[:, :2, 2] / k[:, None]
    return corner + side[:, None] / 2.0, side


def crop_camera(cam: np.ndarray, transform: np.ndarray, photo_size: int, crop_size: int
                ) -> np.ndarray:
    """Move orthographic cameras from the photo's frame into a crop's frame.

    The photo's screen space spans [-1, 1] across ``photo_size`` pixels (pixel = (x + 1) / 2
    * size - 0.5), projected = s * (X_xy + t) with y flipped. The crop is a similarity
    without rotation, pixel' = k * pixel + b, which is x' = a * x + c in screen units with
    ``a = k * photo_size / crop_size``; hence ``s' = a * s``, ``tx' = tx + c_x / s'`` and
    ``ty' = ty - c_y / s'`` (minus: y is flipped).

    Args:
        cam: ``(3,)`` or ``(N, 3)`` = (s, tx, ty) in the photo's frame.
        transform: ``(3, 3)`` photo -> crop pixels, from
            :func:`~emoca_pipeline.data.crop.crop_transform`.
        photo_size: side of the square photo in pixels.
        crop_size: side of the crop in pixels.

    Returns:
        The cameras in the crop's frame, same shape as ``cam``.

    Raises:
        ValueError: a transform with rotation, shear or unequal axis scales.
    """
    matrix = np.asarray(transform, dtype=np.float64)
    if (matrix.shape != (3, 3) or abs(matrix[0, 1]) > 1e-9 or abs(matrix[1, 0]) > 1e-9
            or abs(matrix[0, 0] - matrix[1, 1]) > 1e-9 * abs(matrix[0, 0])
            or np.any(matrix[2] != (0.0, 0.0, 1.0))):
        raise ValueError("transform: expected a (3, 3) scale-and-shift crop transform, got "
                         f"{matrix.tolist()}")
    k = matrix[0, 0]
    a = k * photo_size / crop_size
    c = (k * (photo_size / 2.0 - 0.5) + matrix[:2, 2] + 0.5) * 2.0 / crop_size - 1.0
    cams = np.asarray(cam, dtype=np.float64)
    flat = cams.reshape(-1, 3)
    scale = a * flat[:, 0]
    out = np.stack([scale, flat[:, 1] + c[0] / scale, flat[:, 2] - c[1] / scale], axis=1)
    return out.reshape(cams.shape).astype(np.asarray(cam).dtype, copy=False)


class _CropDataset(Dataset):
    """Rows -> dict(image (3, S, S), landmarks (68, 2) in [-1, 1], identity, and when
    available: mediapipe_landmarks (478, 2) in [-1, 1], seg_mask (1, S, S), ground-truth
    shape, exp, pose, cam (3,) in the crop's frame)."""

    def __init__(self, roots: np.ndarray, paths: np.ndarray, centers: np.ndarray,
                 sides: np.ndarray, landmarks: np.ndarray, identity: np.ndarray,
                 codes: dict[str, np.ndarray], photo_size: np.ndarray, size: int,
                 augment: bool, seed: int, mediapipe: np.ndarray | None = None,
                 seg_masks: np.ndarray | None = None) -> None:
        self.roots, self.paths, self.landmarks = roots, paths, landmarks
        self.centers, self.sides = centers, sides
        self.identity, self.codes, self.photo_size = identity, codes, photo_size
        self.mediapipe, self.seg_masks = mediapipe, seg_masks
        self.size, self.augment = size, augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def crop_transform(self, item: int, jitter: bool) -> np.ndarray:
        """The photo -> crop transform of row ``item`` (EMOCA's scale and shift jitter of the
        crop box when ``jitter``)."""
        center, side = self.centers[item].copy(), float(self.sides[item])
        if jitter:
            side *= float(self.rng.uniform(0.9, 1.1))
            center += self.rng.uniform(-0.05, 0.05, size=2) * side
        return crop_transform(center, side, self.size)

    def to_crop_frame(self, points: np.ndarray, transform: np.ndarray) -> np.ndarray:
        """(K, 2) photo pixels -> (K, 2) the crop's [-1, 1] screen space."""
        pixels = transform_points(points, transform)
        return ((pixels + 0.5) * 2.0 / self.size - 1.0).astype(np.float32)

    def crop_landmarks(self, item: int, transform: np.ndarray) -> np.ndarray:
        """(68, 2) landmarks of row ``item`` in the crop's [-1, 1] screen space."""
        return self.to_crop_frame(self.landmarks[item], transform)

    def _read(self, item: int, flags: int) -> np.ndarray:
        path = Path(self.roots[item]) / self.paths[item] if flags == cv2.IMREAD_COLOR \
            else Path(self.roots[item]) / str(self.seg_masks[item])  # type: ignore[index]
        image = cv2.imread(str(path), flags)
        if image is None:
            raise ValueError(f"{path}: not a readable image")
        return image

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        photo = self._read(item, cv2.IMREAD_COLOR)
        photo = cv2.cvtColor(photo, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        transform = self.crop_transform(item, self.augment)
        crop = warp_crop(photo, transform, self.size)
        if self.augment:
            crop = np.clip(crop * float(self.rng.uniform(0.85, 1.15)), 0.0, 1.0)
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))),
            "landmarks": torch.from_numpy(self.crop_landmarks(item, transform)),
            "identity": torch.tensor(int(self.identity[item])),
        }
        if self.mediapipe is not None:
            sample["mediapipe_landmarks"] = torch.from_numpy(
                self.to_crop_frame(self.mediapipe[item], transform))
        if self.seg_masks is not None:
            mask = self._read(item, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
            mask = warp_crop(mask, transform, self.size).reshape(self.size, self.size)
            sample["seg_mask"] = torch.from_numpy((mask > 0.5).astype(np.float32))[None]
        for name, values in self.codes.items():
            value = values[item]
            if name == "cam":
                value = crop_camera(value, transform, int(self.photo_size[item]), self.size)
            sample[name] = torch.from_numpy(np.asarray(value, dtype=np.float32))
        return sample


class IdentityBatchSampler(Sampler[list[int]]):
    """Batches of ``identities`` identities x ``k`` images each (drawn with replacement for
    identities with fewer images); an epoch covers every identity once."""

    def __init__(self, identity: np.ndarray, identities: int, k: int, seed: int) -> None:
        self.groups = [np.flatnonzero(identity == i) for i in np.unique(identity)]
        self.identities, self.k = identities, k
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return max(1, len(self.groups) // self.identities)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.rng.permutation(len(self.groups))
        for start in range(0, len(self) * self.identities, self.identities):
            batch: list[int] = []
            for g in order[start:start + self.identities]:
                members = self.groups[g]
                pick = self.rng.choice(members, self.k, replace=len(members) < self.k)
                batch.extend(int(i) for i in pick)
            yield batch


def _is_manifest(path: Path) -> bool:
    return path.is_dir()


def _read_source(path: Path, datasets: tuple[str, ...]) -> pa.Table:
    """The rows of a Parquet table, or of a manifest folder (hive partitions ``dataset``
    and/or ``split`` become columns), restricted to ``datasets`` when given."""
    if not _is_manifest(path):
        return pq.read_table(path)
    source = ds.dataset(path, format="parquet", partitioning="hive")
    if not source.files:
        raise ValueError(f"{path}: manifest folder holds no Parquet files")
    check_table_metadata(pq.read_schema(source.files[0]), "manifest", source.files[0])
    condition = None
    if datasets:
        if "dataset" in source.schema.names:
            condition = ds.field("dataset").isin(list(datasets))
        elif not path.name.startswith("dataset=") or path.name[8:] not in datasets:
            raise ValueError(f"{path}: not one of the datasets {', '.join(datasets)}")
    table = source.to_table(filter=condition)
    if table.num_rows == 0:
        raise ValueError(f"{path}: no rows" + (f" of datasets {', '.join(datasets)}"
                                                if datasets else ""))
    return table


def _identity_codes(column: pa.ChunkedArray) -> np.ndarray:
    """(N,) int64 identity codes: the values' ranks; each null row its own identity."""
    values = column.to_pylist()
    known = sorted({str(v) for v in values if v is not None})
    code = {v: i for i, v in enumerate(known)}
    out = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        out[row] = code[str(value)] if value is not None else len(known) + row
    return out


class EmocaDataModule(pl.LightningDataModule):
    """Face crops from a Parquet table or a manifest folder (see the module docstring).

    Training batches of the detail stage, and of the deca stage with
    ``shape_consistency``, hold ``batch_size // k`` identities x ``k`` images; those of the
    coarse stage (EMOCA: K = 1) shuffled rows; validation batches plain rows of the val
    split.

    Attributes:
        mediapipe: (N, 478, 2) MediaPipe points in photo pixels (NaN where none), or None.
        has_seg_mask: whether the table has a ``seg_mask`` column.
        codes: ground-truth codes by name, (N, width) each (empty without ground truth).
    """

    def __init__(self, table: str | os.PathLike, settings: EmocaTrainingSettings,
                 stage: Stage) -> None:
        super().__init__()
        self.table = Path(table)
        if not self.table.exists():
            raise FileNotFoundError(f"{self.table}: no such Parquet table or manifest folder")
        self.settings, self.stage = settings, stage
        self.is_manifest = _is_manifest(self.table)
        data = _read_source(self.table, settings.datasets)
        names = data.column_names
        needed = ["path", "identity", "split", "landmarks"]
        if self.is_manifest:
            needed += ["root", "crop_transform", "image_id"]
        missing = [c for c in needed if c not in names]
        if missing:
            raise ValueError(f"{self.table}: missing column(s) {', '.join(missing)}")
        source = str(self.table)
        count = data.num_rows
        if "root" in names:
            self.roots = np.asarray(data.column("root").to_pylist(), dtype=object)
        else:
            folder = self.table.parent if self.table.is_file() else self.table
            self.roots = np.full(count, str(folder), dtype=object)
        self.paths = np.asarray(data.column("path").to_pylist())
        self.identity = _identity_codes(data.column("identity"))
        self.split = np.asarray(data.column("split").to_pylist())
        self.landmarks = fixed_list_values(data.column("landmarks"), 136, source=source,
                                           name="landmarks", dtype=np.float64,
                                           finite=True).reshape(-1, 68, 2)
        if "crop_transform" in names:
            transforms = fixed_list_values(data.column("crop_transform"), 9, source=source,
                                           name="crop_transform", dtype=np.float64,
                                           finite=True)
            self.centers, self.sides = crop_boxes_from_transforms(transforms)
        else:
            boxes = [crop_box_from_landmarks(points) for points in self.landmarks]
            self.centers = np.array([box.center for box in boxes]).reshape(-1, 2)
            self.sides = np.array([box.size for box in boxes], dtype=np.float64)
        self.mediapipe: np.ndarray | None = None
        if "mediapipe_landmarks" in names:
            self.mediapipe = fixed_list_values(
                data.column("mediapipe_landmarks"), 2 * MEDIAPIPE_POINTS, source=source,
                name="mediapipe_landmarks", dtype=np.float64).reshape(-1, MEDIAPIPE_POINTS, 2)
        self.seg_masks: np.ndarray | None = None
        if "seg_mask" in names:
            column = data.column("seg_mask")
            if column.null_count:
                raise ValueError(f"{self.table}: column seg_mask has {column.null_count} "
                                 "null row(s); give every face a mask or drop the column")
            self.seg_masks = np.asarray(column.to_pylist(), dtype=object)
        self.has_seg_mask = self.seg_masks is not None
        codes_data, codes_source = data, source
        if self.is_manifest and settings.codes_table is not None:
            codes_data = self._join_codes(data, Path(settings.codes_table))
            codes_source = settings.codes_table
        self.codes: dict[str, np.ndarray] = self._read_codes(codes_data, codes_source)
        photo = data  # width and height of the photos the crops are cut from
        self.photo_size = np.zeros(count, dtype=np.int64)
        if "cam" in self.codes:
            if "width" not in photo.column_names or "height" not in photo.column_names:
                raise ValueError(f"{self.table}: column cam needs width and height columns")
            width = np.asarray(photo.column("width").to_pylist())
            height = np.asarray(photo.column("height").to_pylist())
            if np.any(width != height):
                row = int(np.flatnonzero(width != height)[0])
                raise ValueError(f"{self.table}: row {row} ({self.paths[row]}) is "
                                 f"{width[row]}x{height[row]}; cam needs square photos")
            self.photo_size = width.astype(np.int64)

    def _join_codes(self, data: pa.Table, codes_table: Path) -> pa.Table:
        """The codes table's rows in the order of ``data``'s ``image_id``s."""
        if not codes_table.is_file():
            raise FileNotFoundError(f"{codes_table}: no such codes table (codes_table)")
        codes = pq.read_table(codes_table)
        if "image_id" not in codes.column_names:
            raise ValueError(f"{codes_table}: no image_id column to join the manifest on")
        index = {key: row for row, key in enumerate(codes.column("image_id").to_pylist())}
        keys = data.column("image_id").to_pylist()
        rows = [index.get(key, -1) for key in keys]
        if min(rows, default=0) < 0:
            missing = sum(row < 0 for row in rows)
            first = keys[rows.index(-1)]
            raise ValueError(f"{codes_table}: no codes for {missing} of {len(rows)} manifest "
                             f"faces of {self.table} (e.g. image_id {first})")
        return codes.take(pa.array(rows, pa.int64()))

    def _read_codes(self, data: pa.Table, source: str) -> dict[str, np.ndarray]:
        model = self.settings.model
        widths = {"shape": model.n_shape, "exp": model.n_exp, "pose": 6, "cam": 3}
        codes: dict[str, np.ndarray] = {}
        for name in GROUND_TRUTH_COLUMNS:
            if name in data.column_names:
                values = np.asarray(data.column(name).to_pylist(), dtype=np.float32)
                if values.ndim != 2 or values.shape[1] < widths[name]:
                    raise ValueError(f"{source}: column {name} has shape {values.shape}, "
                                     f"expected (N, >= {widths[name]})")
                codes[name] = values[:, :widths[name]]
        return codes

    def dataset(self, split: str, augment: bool) -> _CropDataset:
        """The rows of ``split`` as a Dataset of dicts: ``image`` (3, S, S) in [0, 1],
        ``landmarks`` (68, 2) in the crop's [-1, 1] screen space, ``identity``, and what the
        table has: ``mediapipe_landmarks`` (478, 2) in the same frame, ``seg_mask``
        (1, S, S) 0/1, ground-truth codes (``cam`` (3,) in the crop's frame)."""
        rows = np.flatnonzero(self.split == split)
        if rows.size == 0:
            raise ValueError(f"{self.table}: no rows in split {split!r}")
        return _CropDataset(
            self.roots[rows], self.paths[rows], self.centers[rows], self.sides[rows],
            self.landmarks[rows], self.identity[rows], {k: v[rows] for k, v in self.codes.items()},
            self.photo_size[rows], self.settings.model.image_size, augment,
            self.settings.seed + (split == "train"),
            mediapipe=None if self.mediapipe is None else self.mediapipe[rows],
            seg_masks=None if self.seg_masks is None else self.seg_masks[rows])

    def mean_crop_landmarks(self, split: str = "train") -> np.ndarray:
        """(68, 2) mean landmarks of the split's un-jittered crops, [-1, 1] screen space."""
        data = self.dataset(split, augment=False)
        return np.mean([data.crop_landmarks(i, data.crop_transform(i, jitter=False))
                        for i in range(len(data))], axis=0)

    @property
    def identity_batches(self) -> bool:
        """Whether training batches are identities x K images (detail; deca with the
        shape-consistency exchange)."""
        return self.stage == "detail" or (self.stage == "deca"
                                          and self.settings.shape_consistency)

    def train_dataloader(self) -> DataLoader:
        s = self.settings
        data = self.dataset("train", s.augment)
        if not self.identity_batches:  # no exchange: plain shuffled rows
            return DataLoader(data, batch_size=s.batch_size, shuffle=True, drop_last=True,
                              num_workers=s.num_workers,
                              generator=torch.Generator().manual_seed(s.seed))
        k = s.k_per_identity
        sampler = IdentityBatchSampler(data.identity, max(1, s.batch_size // k), k, s.seed)
        return DataLoader(data, batch_sampler=sampler, num_workers=s.num_workers)

    def val_dataloader(self) -> DataLoader:
        s = self.settings
        return DataLoader(self.dataset("val", False), batch_size=s.batch_size,
                          num_workers=s.num_workers)
