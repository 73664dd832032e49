"""EMOCA training: DECA's coarse pre-training (E_flame), EMOCA's coarse stage (E_expression,
E_flame frozen) and the detail stage (E_detail, D_detail).

:func:`train_emoca` runs one stage from a YAML config (:class:`EmocaTrainingSettings`) on a
Parquet table with ``path``, ``identity``, ``split`` and 68 ``landmarks`` (x, y pixels of the
photo; the synthetic table, or a manifest with those columns), tracked in MLflow through
:func:`emoca_pipeline.tracking.make_mlflow_logger`. Checkpoints go to ``OUT/checkpoints``;
the best weights to ``OUT/model.pt`` (:func:`~emoca_pipeline.models.emoca.save_emoca_checkpoint`).

The stages chain through ``init``: ``deca`` starts from the FLAME assets (E_flame's head set
to the mean face of the training crops, :func:`prepare_model`), ``coarse`` from the deca
model (``clone_expression_trunk: true`` copies the trained trunk into E_expression), and
``detail`` from the coarse model. Tables with ground-truth codes (the synthetic one: shape,
exp, pose and the photo's cam) also feed the optional ground-truth loss terms and the
``exp_error`` metric; the camera is moved into each crop's frame with :func:`crop_camera`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from emoca_pipeline.data.crop import (
    crop_box_from_landmarks,
    crop_transform,
    transform_points,
    warp_crop,
)
from emoca_pipeline.io.atomic import atomic_write_text
from emoca_pipeline.losses.emoca import (
    CoarseLossWeights,
    DetailLossWeights,
    EmocaCoarseLoss,
    EmocaDetailLoss,
    weighted_landmark_loss,
)
from emoca_pipeline.models.emoca import (
    EmocaModel,
    EmocaModelSettings,
    load_emoca_checkpoint,
    save_emoca_checkpoint,
)
from emoca_pipeline.training.config import load_settings, settings_to_dict

__all__ = ["EmocaDataModule", "EmocaModule", "EmocaTrainingResult", "EmocaTrainingSettings",
           "train_emoca"]

log = logging.getLogger(__name__)
Stage = Literal["deca", "coarse", "detail"]
STAGES: tuple[str, ...] = ("deca", "coarse", "detail")
#: DECA's coarse pre-training weights (lmk 1, eyed 1, lipd 0.5, photo 2, regularisers).
DECA_LOSS_WEIGHTS = CoarseLossWeights(
    emotion=0.0, landmark=1.0, eye_distance=1.0, lip_distance=0.5, mouth_corner=0.0,
    photometric=2.0, expression_reg=1e-4, shape_reg=1e-4, tex_reg=1e-4, light_reg=1.0)
#: Ground-truth columns of the synthetic table, with their widths.
GROUND_TRUTH_COLUMNS = ("shape", "exp", "pose", "cam")


@dataclass(frozen=True)
class EmocaTrainingSettings:
    """One EMOCA training stage (defaults: the paper's where it has one).

    assets: FLAME asset folder (relative to the config file), used when ``init`` is null.
    init: our checkpoint to start from (e.g. an imported DECA/EMOCA, or the coarse stage's
        model.pt for the detail stage); relative to the config file.
    flame_weights: local ResNet-50 weights for E_flame when starting from assets.
    emotion_network: local EmotionImageNet weights for the emotion loss (null: term off,
        with a warning). vgg19_weights: local VGG19 weights for ID-MRF (null: off).
    model: dimensions (image_size 224 in the paper; smaller is faster on CPUs).
    deca, coarse, detail: loss weights of each stage (deca: DECA's coarse pre-training,
        with optional ground-truth terms gt_*). learning_rate: deca 1e-4, coarse 5e-5,
        detail 1e-4 in the papers (null: the stage's).
    init_flame_head: deca stage from assets: start E_flame's head at the camera that fits
        FLAME's mean landmarks to the mean training-crop landmarks (see
        :meth:`EmocaModel.init_flame_head`).
    clone_expression_trunk: coarse stage: copy E_flame's trunk into E_expression first
        (EMOCA's ``deca_clone`` on a freshly trained DECA).
    batch_size, k_per_identity: identities x images per batch (the
        detail stage exchanges detail codes among the K images of one identity).
    max_steps, max_epochs, patience, limit_val_batches: length and early stopping.
    val_every_n_epochs: validate (and checkpoint) every this many epochs.
    checkpoint_weights_only: Lightning checkpoints without optimizer state (a third of
        the size: the model is 79 M parameters; no exact resume).
    log_lightning_checkpoints: also upload Lightning's best checkpoint to MLflow (the run
        always holds ``model.pt``, our checkpoint of the best weights, and training.json).
    recalibrate_batchnorm: before each validation, recompute the BatchNorm statistics of
        the trained modules as exact averages over this many training batches (0: off;
        "precise BN"). A from-scratch E_flame's running averages lag far behind its
        weights within a short run, so eval-mode outputs would not show what it learned.
    augment: scale/shift jitter of the crop and brightness jitter (train split only).
    accelerator, devices, precision: Lightning's ("auto" on GPUs gives bf16-mixed + DDP
        when precision/strategy say so). num_workers: DataLoader workers.
    """

    name: str = "emoca"
    seed: int = 0
    assets: str | None = None
    init: str | None = None
    flame_weights: str | None = None
    emotion_network: str | None = None
    vgg19_weights: str | None = None
    model: EmocaModelSettings = field(default_factory=EmocaModelSettings)
    deca: CoarseLossWeights = DECA_LOSS_WEIGHTS
    coarse: CoarseLossWeights = field(default_factory=CoarseLossWeights)
    detail: DetailLossWeights = field(default_factory=DetailLossWeights)
    learning_rate: float | None = None
    init_flame_head: bool = True
    clone_expression_trunk: bool = False
    batch_size: int = 8
    k_per_identity: int = 4
    max_steps: int = -1
    max_epochs: int = 100
    patience: int = 5
    limit_val_batches: int | float = 1.0
    val_every_n_epochs: int = 1
    checkpoint_weights_only: bool = True
    log_lightning_checkpoints: bool = False
    recalibrate_batchnorm: int = 0
    augment: bool = True
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    experiment: str = "emoca-pipeline"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.k_per_identity < 1:
            raise ValueError("batch_size and k_per_identity: must be >= 1")
        if self.val_every_n_epochs < 1:
            raise ValueError(f"val_every_n_epochs: must be >= 1, got {self.val_every_n_epochs}")
        if self.recalibrate_batchnorm < 0:
            raise ValueError(f"recalibrate_batchnorm: must be >= 0, got "
                             f"{self.recalibrate_batchnorm}")


def load_emoca_settings(path: str | os.PathLike, init: str | os.PathLike | None = None,
                        assets: str | os.PathLike | None = None) -> EmocaTrainingSettings:
    """:func:`load_settings` for :class:`EmocaTrainingSettings`; relative file settings are
    made relative to the config file's folder. ``init`` and ``assets``, when given,
    replace the file's (as given: relative to the working directory).

    Raises:
        FileNotFoundError: ``init`` or ``assets`` given but missing.
    """
    settings = load_settings(path, EmocaTrainingSettings)
    folder = Path(path).parent
    changes = {}
    for name in ("assets", "init", "flame_weights", "emotion_network", "vgg19_weights"):
        value = getattr(settings, name)
        if value is not None and not Path(value).is_absolute():
            changes[name] = str(folder / value)
    for name, override in (("init", init), ("assets", assets)):
        if override is not None:
            if not Path(override).exists():
                raise FileNotFoundError(f"{name} {override}: no such file or folder")
            changes[name] = str(Path(override).resolve())
    return dataclasses.replace(settings, **changes)


# ------------------------------------------------------------------------------ data


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
    """Rows of the table -> dict(image (3, S, S), landmarks (68, 2) in [-1, 1], identity,
    and with ground truth: shape, exp, pose, cam (3,) in the crop's frame)."""

    def __init__(self, root: Path, paths: np.ndarray, landmarks: np.ndarray,
                 identity: np.ndarray, codes: dict[str, np.ndarray], photo_size: np.ndarray,
                 size: int, augment: bool, seed: int) -> None:
        self.root, self.paths, self.landmarks = root, paths, landmarks
        self.identity, self.codes, self.photo_size = identity, codes, photo_size
        self.size, self.augment = size, augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def crop_transform(self, item: int, jitter: bool) -> np.ndarray:
        """The photo -> crop transform of row ``item`` (EMOCA's scale and shift jitter of the
        crop box when ``jitter``)."""
        box = crop_box_from_landmarks(self.landmarks[item])
        center, side = box.center.copy(), box.size
        if jitter:
            side *= float(self.rng.uniform(0.9, 1.1))
            center += self.rng.uniform(-0.05, 0.05, size=2) * side
        return crop_transform(center, side, self.size)

    def crop_landmarks(self, item: int, transform: np.ndarray) -> np.ndarray:
        """(68, 2) landmarks of row ``item`` in the crop's [-1, 1] screen space."""
        pixels = transform_points(self.landmarks[item], transform)
        return ((pixels + 0.5) * 2.0 / self.size - 1.0).astype(np.float32)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        path = self.root / self.paths[item]
        photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if photo is None:
            raise ValueError(f"{path}: not a readable image")
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
        for name, values in self.codes.items():
            value = values[item]
            if name == "cam":
                value = crop_camera(value, transform, int(self.photo_size[item]), self.size)
            sample[name] = torch.from_numpy(np.asarray(value, dtype=np.float32))
        return sample


class _IdentityBatchSampler(Sampler[list[int]]):
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


class EmocaDataModule(pl.LightningDataModule):
    """Face crops from a Parquet table (``path`` relative to the table's folder,
    ``identity``, ``split``, ``landmarks`` [136]; optional ground truth: ``shape``, ``exp``,
    ``pose``, ``cam`` (the photo's frame) with ``width`` and ``height``).

    Training batches of the detail stage hold ``batch_size // k`` identities x ``k`` images,
    those of the deca and coarse stages shuffled rows; validation batches plain rows of the
    val split."""

    def __init__(self, table: str | os.PathLike, settings: EmocaTrainingSettings,
                 stage: Stage) -> None:
        super().__init__()
        self.table = Path(table)
        if not self.table.exists():
            raise FileNotFoundError(f"{self.table}: no such Parquet table")
        self.settings, self.stage = settings, stage
        data = pq.read_table(self.table)
        needed = ("path", "identity", "split", "landmarks")
        missing = [c for c in needed if c not in data.column_names]
        if missing:
            raise ValueError(f"{self.table}: missing column(s) {', '.join(missing)}")
        self.root = self.table.parent if self.table.is_file() else self.table
        self.paths = np.asarray(data.column("path").to_pylist())
        self.identity = np.asarray(data.column("identity").to_pylist())
        self.split = np.asarray(data.column("split").to_pylist())
        self.landmarks = np.asarray(data.column("landmarks").to_pylist(),
                                    dtype=np.float64).reshape(-1, 68, 2)
        widths = {"shape": settings.model.n_shape, "exp": settings.model.n_exp, "pose": 6,
                  "cam": 3}
        self.codes: dict[str, np.ndarray] = {}
        for name in GROUND_TRUTH_COLUMNS:
            if name in data.column_names:
                values = np.asarray(data.column(name).to_pylist(), dtype=np.float32)
                if values.ndim != 2 or values.shape[1] < widths[name]:
                    raise ValueError(f"{self.table}: column {name} has shape {values.shape}, "
                                     f"expected (N, >= {widths[name]})")
                self.codes[name] = values[:, :widths[name]]
        self.photo_size = np.zeros(len(self.paths), dtype=np.int64)
        if "cam" in self.codes:
            if "width" not in data.column_names or "height" not in data.column_names:
                raise ValueError(f"{self.table}: column cam needs width and height columns")
            width = np.asarray(data.column("width").to_pylist())
            height = np.asarray(data.column("height").to_pylist())
            if np.any(width != height):
                row = int(np.flatnonzero(width != height)[0])
                raise ValueError(f"{self.table}: row {row} ({self.paths[row]}) is "
                                 f"{width[row]}x{height[row]}; cam needs square photos")
            self.photo_size = width.astype(np.int64)

    def dataset(self, split: str, augment: bool) -> _CropDataset:
        rows = np.flatnonzero(self.split == split)
        if rows.size == 0:
            raise ValueError(f"{self.table}: no rows in split {split!r}")
        return _CropDataset(self.root, self.paths[rows], self.landmarks[rows],
                            self.identity[rows], {k: v[rows] for k, v in self.codes.items()},
                            self.photo_size[rows], self.settings.model.image_size, augment,
                            self.settings.seed + (split == "train"))

    def mean_crop_landmarks(self, split: str = "train") -> np.ndarray:
        """(68, 2) mean landmarks of the split's un-jittered crops, [-1, 1] screen space."""
        data = self.dataset(split, augment=False)
        return np.mean([data.crop_landmarks(i, data.crop_transform(i, jitter=False))
                        for i in range(len(data))], axis=0)

    def train_dataloader(self) -> DataLoader:
        s = self.settings
        data = self.dataset("train", s.augment)
        if self.stage != "detail":  # no exchange: plain shuffled rows
            return DataLoader(data, batch_size=s.batch_size, shuffle=True, drop_last=True,
                              num_workers=s.num_workers,
                              generator=torch.Generator().manual_seed(s.seed))
        k = s.k_per_identity
        sampler = _IdentityBatchSampler(data.identity, max(1, s.batch_size // k), k, s.seed)
        return DataLoader(data, batch_sampler=sampler, num_workers=s.num_workers)

    def val_dataloader(self) -> DataLoader:
        s = self.settings
        return DataLoader(self.dataset("val", False), batch_size=s.batch_size,
                          num_workers=s.num_workers)


# ------------------------------------------------------------------------------ module


def detail_exchange_order(identity: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A permutation within each identity (the original's per-ring ``new_order``)."""
    order = torch.arange(identity.shape[0])
    for value in identity.unique():
        members = torch.nonzero(identity == value).flatten()
        order[members] = members[torch.randperm(members.numel(), generator=generator)]
    return order


class EmocaModule(pl.LightningModule):
    """Model + losses + metrics of one stage (no data, no files)."""

    def __init__(self, model: EmocaModel, stage: Stage, coarse_loss: EmocaCoarseLoss,
                 detail_loss: EmocaDetailLoss | None, learning_rate: float, seed: int = 0
                 ) -> None:
        super().__init__()
        self.model = model.set_stage(stage)
        self.stage = stage
        self.coarse_loss = coarse_loss
        self.detail_loss = detail_loss
        self.learning_rate = learning_rate
        self.generator = torch.Generator().manual_seed(seed)

    def losses(self, batch: Mapping[str, torch.Tensor], training: bool
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage's total loss and its metrics (every term, ``landmark_l1``, and
        ``exp_error`` = mean |exp - ground truth| when the batch has it) on one batch;
        ``training`` enables the detail stage's code exchange."""
        images, landmarks = batch["image"], batch["landmarks"]
        codes = self.model.encode(images, with_detail=self.stage == "detail")
        metrics: dict[str, torch.Tensor] = {}
        if self.stage == "detail" and training and codes.detail is not None:
            order = detail_exchange_order(batch["identity"].cpu(), self.generator)
            codes = codes._replace(**{
                name: torch.cat([value, value], 0) for name, value in codes._asdict().items()
                if name != "detail"}, detail=torch.cat([codes.detail, codes.detail[order]], 0))
            images = torch.cat([images, images], 0)
            landmarks = torch.cat([landmarks, landmarks], 0)
        out = self.model.decode(codes)
        coarse = out.coarse
        if self.stage in ("deca", "coarse"):
            truth = {k: batch[k] for k in GROUND_TRUTH_COLUMNS if k in batch}
            terms = self.coarse_loss(
                coarse.images, coarse.landmarks2d, codes.exp, images, landmarks, coarse.masks,
                codes={"shape": codes.shape, "tex": codes.tex, "pose": codes.pose,
                       "cam": codes.cam, "light": codes.light},
                ground_truth=truth or None)
        else:
            assert out.detail is not None and self.detail_loss is not None
            targets = self.model.uv_targets(images, coarse)
            terms = self.detail_loss(out.detail.uv_texture, targets.uv_texture_gt,
                                     targets.uv_vis_mask, out.detail.uv_z, out.detail.uv_shading,
                                     out.detail.images, images, coarse.masks)
            metrics["photometric_coarse"] = (coarse.masks * (coarse.images - images).abs()
                                             ).mean().detach()
        metrics.update(terms.terms)
        metrics["landmark_l1"] = weighted_landmark_loss(coarse.landmarks2d, landmarks).detach()
        if "exp" in batch:
            gt = torch.cat([batch["exp"]] * (codes.exp.shape[0] // batch["exp"].shape[0]), 0)
            metrics["exp_error"] = (codes.exp - gt).abs().mean().detach()
        return terms.total, metrics

    def trained_modules(self) -> list[torch.nn.Module]:
        """The modules this stage trains (their BatchNorm statistics move)."""
        m = self.model
        if self.stage == "detail":
            return [m.E_detail, m.D_detail]
        if m.flame_encoder_trains:
            return [m.E_flame]
        assert m.E_expression is not None
        return [m.E_expression]

    @torch.no_grad()
    def recalibrate_batchnorm(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> int:
        """Reset the trained modules' BatchNorm statistics and recompute them as exact
        averages over ``batches`` (forward passes in train mode, no grad); returns the
        number of batches used (0: statistics left as they were)."""
        norms = [module for part in self.trained_modules() for module in part.modules()
                 if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
        saved = [(n.momentum, n.running_mean.clone(), n.running_var.clone()) for n in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average
        was_training = self.model.training
        self.model.train()
        used = 0
        try:
            for batch in batches:
                self.model(batch["image"].to(self.device), with_detail=self.stage == "detail")
                used += 1
        finally:
            for norm, (momentum, mean, var) in zip(norms, saved, strict=True):
                norm.momentum = momentum
                if used == 0:
                    norm.running_mean.copy_(mean)
                    norm.running_var.copy_(var)
            self.model.train(was_training)
        return used

    def on_train_start(self) -> None:
        # Lightning keeps the modes modules come in with, and a loaded checkpoint comes in
        # eval mode: put the stage's trained parts in train mode (frozen ones stay in eval).
        self.model.train()

    def on_validation_epoch_start(self) -> None:
        count = getattr(self, "recalibration_batches", 0)
        if count > 0 and not self.trainer.sanity_checking:
            loader = self.trainer.datamodule.train_dataloader()
            self.recalibrate_batchnorm(itertools.islice(loader, count))

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.losses(batch, training=True)
        size = batch["image"].shape[0]
        self.log("train/loss", loss.detach(), batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=size)
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss, metrics = self.losses(batch, training=False)
        size = batch["image"].shape[0]
        self.log("val/loss", loss, batch_size=size, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, batch_size=size,
                      sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = (self.model.detail_parameters() if self.stage == "detail"
                  else self.model.coarse_parameters())
        return torch.optim.Adam(params, lr=self.learning_rate)


# ------------------------------------------------------------------------------ job


class EmocaTrainingResult(NamedTuple):
    """model_path: best weights (our checkpoint); summary_path: training.json;
    run_id: the MLflow child run; val_metrics: the last validation metrics."""

    model_path: Path
    summary_path: Path
    run_id: str
    val_metrics: dict[str, float]


def fit_camera(template: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The orthographic camera (s, tx, ty) that best maps FLAME landmarks onto ``target``.

    Least squares over s and t of ``s * (P + t)`` with y flipped against the target.

    Args:
        template: (L, 2) landmarks projected with the unit camera (1, 0, 0), i.e. (x, -y).
        target: (L, 2) in the same screen space.
    """
    p = np.asarray(template, dtype=np.float64)
    q = np.asarray(target, dtype=np.float64)
    p_c, q_c = p - p.mean(0), q - q.mean(0)
    scale = float((p_c * q_c).sum() / (p_c ** 2).sum())
    if not scale > 0:
        raise ValueError("fit_camera: the target landmarks do not fit FLAME's (scale <= 0)")
    offset = q.mean(0) - scale * p.mean(0)  # = (s tx, -s ty)
    return np.array([scale, offset[0] / scale, -offset[1] / scale])


def prepare_model(model: EmocaModel, settings: EmocaTrainingSettings, stage: Stage,
                  data: EmocaDataModule | None = None) -> EmocaModel:
    """Stage set-up: the deca stage from assets starts E_flame's head at the camera of the
    mean training crop (``init_flame_head``, needs ``data``); the coarse stage clones
    E_flame's trunk into E_expression (``clone_expression_trunk``)."""
    if stage == "deca" and settings.init is None and settings.init_flame_head:
        if data is None:
            raise ValueError("prepare_model: init_flame_head needs the data module")
        from emoca_pipeline.render import project_landmarks

        zeros = torch.zeros(1, 1)
        with torch.no_grad():
            out = model.flame(zeros.new_zeros(1, model.settings.n_shape),
                              zeros.new_zeros(1, model.settings.n_exp), zeros.new_zeros(1, 6))
            template = project_landmarks(out.landmarks2d, torch.tensor([[1.0, 0.0, 0.0]]))
        cam = fit_camera(template[0].numpy(), data.mean_crop_landmarks())
        model.init_flame_head(cam)
        log.info("E_flame head initialised at camera %s", np.round(cam, 4).tolist())
    if stage == "coarse" and settings.clone_expression_trunk:
        if model.E_expression is None:
            raise ValueError("clone_expression_trunk: the model has no E_expression "
                             "(expression_backbone: none)")
        model.clone_expression_trunk()
    return model


def build_model(settings: EmocaTrainingSettings) -> EmocaModel:
    """The model a stage starts from: ``init`` (our checkpoint) or fresh from ``assets``."""
    if settings.init is not None:
        model = load_emoca_checkpoint(settings.init)
        if model.settings != settings.model:
            raise ValueError(f"init {settings.init}: model settings {model.settings} differ "
                             f"from the config's {settings.model}")
        return model
    if settings.assets is None:
        raise ValueError("assets or init: one must be given (a FLAME asset folder or a "
                         "checkpoint to start from), in the config or as arguments")
    return EmocaModel.from_assets(settings.assets, settings.model,
                                  flame_weights=settings.flame_weights)


def train_emoca(
    stage: Stage,
    config_file: str | os.PathLike,
    table: str | os.PathLike,
    out_dir: str | os.PathLike,
    tracking_uri: str | None = None,
    results_dir: str | os.PathLike = "results",
    parent_run_id: str | None = None,
    model: EmocaModel | None = None,
    init: str | os.PathLike | None = None,
    assets: str | os.PathLike | None = None,
) -> EmocaTrainingResult:
    """Train one stage; write ``OUT/model.pt``, ``OUT/training.json``, ``OUT/checkpoints/``.

    Args:
        stage: "coarse" or "detail".
        config_file: YAML :class:`EmocaTrainingSettings`.
        table: Parquet table (see :class:`EmocaDataModule`).
        out_dir: output folder.
        tracking_uri: MLflow URI (default ``sqlite:///<results_dir>/mlflow.db``).
        results_dir: the workflow's results folder.
        parent_run_id: MLflow parent (default ``$EMOCA_MLFLOW_PARENT_RUN`` or on demand).
        model: start from this model, as it is, instead of ``init``/``assets`` and
            :func:`prepare_model` (tests, notebooks).
        init, assets: override the config's ``init`` / ``assets`` (the workflow passes the
            previous stage's model.pt and the FLAME asset folder).
    """
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from emoca_pipeline.models.emotion import EmotionImageNet
    from emoca_pipeline.tracking import input_tags, log_artifact, log_params, make_mlflow_logger

    if stage not in STAGES:
        raise ValueError(f"stage: expected one of {', '.join(STAGES)}, got {stage!r}")
    started = time.perf_counter()
    settings = load_emoca_settings(config_file, init=init, assets=assets)
    out = Path(out_dir)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    data = EmocaDataModule(table, settings, stage)
    if model is None:
        model = prepare_model(build_model(settings), settings, stage, data)
    coarse_weights = settings.deca if stage == "deca" else settings.coarse
    emotion = (EmotionImageNet(weights_path=settings.emotion_network)
               if settings.emotion_network and stage != "detail" and coarse_weights.emotion > 0
               else None)
    coarse_loss = EmocaCoarseLoss(coarse_weights, emotion)
    detail_loss = EmocaDetailLoss(settings.detail, settings.vgg19_weights) \
        if stage == "detail" else None
    lr = settings.learning_rate or {"deca": 1e-4, "coarse": 5e-5, "detail": 1e-4}[stage]
    module = EmocaModule(model, stage, coarse_loss, detail_loss, lr, settings.seed)
    module.recalibration_batches = settings.recalibrate_batchnorm

    disabled = {}
    if stage != "detail" and coarse_loss.emotion is None and coarse_weights.emotion > 0:
        disabled["emoca.loss.emotion"] = "disabled: no emotion_network configured"
    if detail_loss is not None and not detail_loss.idmrf.enabled and settings.detail.idmrf > 0:
        disabled["emoca.loss.idmrf"] = f"disabled: {detail_loss.idmrf.reason}"
    logger = make_mlflow_logger(
        tracking_uri, results_dir, settings.experiment, f"{settings.name}-{stage}",
        parent_run_id=parent_run_id,
        tags={"emoca.job": f"train_{stage}", **disabled, **input_tags(table=table)},
        log_model=settings.log_lightning_checkpoints, finish_on_teardown=False)
    try:
        log_params(logger, {"stage": stage, "table": str(Path(table).resolve()),
                            **settings_to_dict(settings), "learning_rate_used": lr})
        checkpoints = out / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in checkpoints.glob("*.ckpt"):
            stale.unlink()
        checkpoint = ModelCheckpoint(
            dirpath=checkpoints, filename="step{step:06d}-val_loss{val/loss:.5f}",
            auto_insert_metric_name=False, monitor="val/loss", mode="min", save_top_k=1,
            save_weights_only=settings.checkpoint_weights_only)
        stopping = EarlyStopping(monitor="val/loss", mode="min", patience=settings.patience)
        trainer = pl.Trainer(
            accelerator=settings.accelerator, devices=settings.devices,
            strategy=settings.strategy, precision=settings.precision,
            max_epochs=settings.max_epochs, max_steps=settings.max_steps,
            limit_val_batches=settings.limit_val_batches,
            check_val_every_n_epoch=settings.val_every_n_epochs, logger=logger,
            callbacks=[checkpoint, stopping], enable_progress_bar=False,
            num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=out)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            # Frozen parts are in eval mode on purpose (EmocaModel.train keeps them there).
            warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
            trainer.fit(module, datamodule=data)
        best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
        if best is not None:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        elif settings.recalibrate_batchnorm > 0:  # no validation ran: calibrate the last
            module.recalibrate_batchnorm(itertools.islice(data.train_dataloader(),
                                                          settings.recalibrate_batchnorm))
        val = {k: float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith("val/")}
        model_path = save_emoca_checkpoint(out / "model.pt", module.model.eval(),
                                           extra={"stage": stage, "name": settings.name})
        summary = {"stage": stage, "name": settings.name, "mlflow_run_id": logger.run_id,
                   "best_checkpoint": str(best) if best else None, "val": val,
                   "steps": trainer.global_step, "epochs": trainer.current_epoch,
                   "disabled_losses": disabled,
                   "seconds": round(time.perf_counter() - started, 2)}
        summary_path = out / "training.json"
        atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
        for path in (model_path, summary_path):
            log_artifact(logger, path)
    except BaseException:
        logger.finish("failed")
        raise
    logger.finish("success")
    return EmocaTrainingResult(model_path, summary_path, logger.run_id, val)
