"""Training and inference of the emotion networks with PyTorch Lightning.

* :class:`EmotionDataModule` reads a Parquet table (a file, or a folder of Parquet files
  such as the hive-partitioned manifest) with labels ``expression`` (0..7, AffectNet order),
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

* :class:`EmotionModule` is the network + :class:`~emoca_pipeline.losses.emotion.EmotionLoss`
  + whole-set metric accumulators; Adam. Validation logs ``val/loss`` (the batch losses
  averaged over samples; VA weights unshaken) and whole-set ``val/v_ccc``, ``val/accuracy``...

* :func:`train_emotion` is one training job: settings from YAML, early stopping on
  ``val/loss``, checkpoints in ``<out>/checkpoints``, an MLflow child run
  (:mod:`emoca_pipeline.tracking`); it writes ``<out>/model.pt`` (the best weights and what
  is needed to rebuild the network), ``<out>/predictions.parquet`` (the test split) and
  ``<out>/training.json`` (a summary). :func:`predict_emotion` runs a saved ``model.pt`` on
  any table; :func:`evaluate_emotion` (re-exported) makes the results table.

``model.pt`` holds ``{"state_dict": ..., "emoca_emotion": {...}}`` and loads with
``torch.load(weights_only=True)``; for the image network its state dict is what
:class:`~emoca_pipeline.models.emotion.EmotionImageNet`'s ``weights_path`` accepts, which is
how EMOCA's emotion-consistency loss gets its frozen network.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from emoca_pipeline.data.crop import crop_box_from_landmarks, crop_transform, warp_crop
from emoca_pipeline.evaluation.emotion_table import (
    evaluate_emotion,
    write_emotion_predictions,
)
from emoca_pipeline.evaluation.metrics import (
    ClassificationAccumulator,
    RegressionAccumulator,
    regression_metrics,
)
from emoca_pipeline.io import atomic_output, atomic_write_text
from emoca_pipeline.io.images import read_image
from emoca_pipeline.losses.emotion import EmotionLoss, class_balanced_weights
from emoca_pipeline.models.emotion import (
    AFFECTNET_CLASSES,
    EmoMLP,
    EmoMLPSettings,
    EmotionImageNet,
    EmotionOutput,
    filter_affectnet_labels,
)
from emoca_pipeline.training.config import (
    EmotionImageSettings,
    EmotionTrainingSettings,
    load_emotion_settings,
    settings_to_dict,
)

__all__ = [
    "INPUT_KINDS",
    "MODEL_FORMAT",
    "EmotionDataModule",
    "EmotionModule",
    "EmotionTrainingResult",
    "build_emotion_model",
    "evaluate_emotion",
    "load_emotion_model",
    "predict_emotion",
    "save_emotion_model",
    "train_emotion",
]

InputKind = Literal["codes", "images"]

#: The two kinds of input an emotion network can take.
INPUT_KINDS: tuple[str, ...] = ("codes", "images")

#: Format tag of ``model.pt`` files.
MODEL_FORMAT = "emoca-emotion-model/1"

SPLITS = ("train", "val", "test")

log = logging.getLogger(__name__)


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
    """A list column with ``width`` numbers per row -> (N, width) float32, all finite."""
    column = table.column(name)
    kind = column.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind)
            or pa.types.is_large_list(kind)):
        raise ValueError(f"{path}: column {name!r} must be a list of numbers, got {kind}")
    if column.null_count:
        raise ValueError(f"{path}: column {name!r} has {column.null_count} null row(s)")
    array = column.combine_chunks()
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if lengths.size and (lengths != width).any():
        bad = int(lengths[lengths != width][0])
        raise ValueError(f"{path}: column {name!r} has rows of length {bad}, expected {width}")
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    values = values.reshape(len(array), width)
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: column {name!r} contains NaN or inf values")
    return values


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

    Batches are dicts of tensors: ``index`` (B,) row numbers into :attr:`keys` ...;
    ``expression`` (B,) int64, ``valence`` and ``arousal`` (B,) float32; codes ``shape``
    (B, 100), ``exp`` (B, 50), ``jaw`` (B, 3) or ``image`` (B, 3, S, S).
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

    def split_sizes(self) -> dict[str, int]:
        """Usable rows per split, and rows dropped for their labels or status."""
        sizes = {split: int(self.indices(split).size) for split in SPLITS}
        sizes["dropped"] = self.dropped
        return sizes


# ---------------------------------------------------------------------------------------
# Lightning module


class _StageMetrics:
    """Whole-set metrics and the sample-weighted loss of one validation/test pass."""

    def __init__(self, n_classes: int) -> None:
        self.valence = RegressionAccumulator()
        self.arousal = RegressionAccumulator()
        self.expression = ClassificationAccumulator(n_classes)
        self.loss_sum = 0.0
        self.loss_count = 0

    def merge(self, other: _StageMetrics) -> None:
        self.valence.merge(other.valence)
        self.arousal.merge(other.arousal)
        self.expression.merge(other.expression)
        self.loss_sum += other.loss_sum
        self.loss_count += other.loss_count

    def values(self) -> dict[str, float]:
        v, a = self.valence.compute(), self.arousal.compute()
        e = self.expression.compute()
        values = {
            "loss": self.loss_sum / self.loss_count if self.loss_count else float("nan"),
            "v_pcc": v.pcc, "v_ccc": v.ccc, "v_rmse": v.rmse, "v_sagr": v.sagr,
            "a_pcc": a.pcc, "a_ccc": a.ccc, "a_rmse": a.rmse, "a_sagr": a.sagr,
            "accuracy": e.accuracy, "macro_f1": e.macro_f1,
        }
        return values


class EmotionModule(pl.LightningModule):
    """An emotion network with its loss, optimiser and whole-set validation metrics.

    Args:
        model: an :class:`EmoMLP` (batches with codes) or :class:`EmotionImageNet` (batches
            with ``image``).
        loss: the training loss (default: :class:`EmotionLoss` with the paper's settings).
        learning_rate: Adam's learning rate.
    """

    def __init__(
        self,
        model: EmoMLP | EmotionImageNet,
        loss: EmotionLoss | None = None,
        learning_rate: float = 1e-4,
    ) -> None:
        super().__init__()
        if not isinstance(model, EmoMLP | EmotionImageNet):
            raise ValueError(f"model: expected EmoMLP or EmotionImageNet, got {type(model)}")
        self.model = model
        self.loss = loss or EmotionLoss()
        self.learning_rate = learning_rate
        self.n_classes = (model.settings.n_expressions if isinstance(model, EmoMLP)
                          else model.n_expressions)
        self._stage: _StageMetrics | None = None

    def forward(self, batch: Mapping[str, torch.Tensor]) -> EmotionOutput:
        """A batch dict (codes or ``image`` (B, 3, S, S)) -> EmotionOutput for B samples."""
        if isinstance(self.model, EmoMLP):
            used = dict(self.model.settings.parts)
            return self.model(
                shape=batch["shape"] if "shape" in used else None,
                expression=batch["exp"] if "expression" in used else None,
                jaw=batch["jaw"] if "jaw" in used else None,
            )
        return self.model(batch["image"])

    def _loss(self, output: EmotionOutput, batch: Mapping[str, torch.Tensor]):
        return self.loss(output, batch["expression"], batch["valence"], batch["arousal"])

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        output = self(batch)
        loss = self._loss(output, batch)
        size = int(batch["expression"].shape[0])
        self.log("train/loss", loss.total, on_step=True, on_epoch=True, batch_size=size)
        self.log_dict({f"train/{name}": value for name, value in loss.terms.items()},
                      on_step=True, on_epoch=False, batch_size=size)
        return loss.total

    def on_validation_epoch_start(self) -> None:
        self._stage = _StageMetrics(self.n_classes)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        assert self._stage is not None
        output = self(batch)
        size = int(batch["expression"].shape[0])
        if size >= 2:  # batch PCC/CCC need two samples; a lone last sample adds no loss
            self._stage.loss_sum += float(self._loss(output, batch).total) * size
            self._stage.loss_count += size
        self._stage.valence.update(output.valence.float(), batch["valence"])
        self._stage.arousal.update(output.arousal.float(), batch["arousal"])
        self._stage.expression.update(output.expr_logits.float(), batch["expression"])

    def on_validation_epoch_end(self) -> None:
        assert self._stage is not None
        stage = self._stage
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and self.trainer.world_size > 1:
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, stage)
            stage = _StageMetrics(self.n_classes)
            for part in gathered:
                stage.merge(part)
        self.log_dict({f"val/{name}": value for name, value in stage.values().items()},
                      sync_dist=False)
        self._stage = None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.learning_rate)


# ---------------------------------------------------------------------------------------
# Saved models


def build_emotion_model(input: InputKind, mlp: EmoMLPSettings | None = None,
                        image: EmotionImageSettings | None = None) -> EmoMLP | EmotionImageNet:
    """A fresh network for ``input``: EmoMLP on codes, the ResNet-50 network on images."""
    if input == "codes":
        return EmoMLP(mlp or EmoMLPSettings())
    if input == "images":
        image = image or EmotionImageSettings()
        return EmotionImageNet(len(AFFECTNET_CLASSES), weights_path=image.weights,
                               input_normalization=image.input_normalization)
    raise ValueError(f"input: expected 'codes' or 'images', got {input!r}")


def save_emotion_model(path: str | os.PathLike, model: EmoMLP | EmotionImageNet, name: str,
                       image: EmotionImageSettings | None = None) -> Path:
    """Write ``model.pt``: the weights and how to rebuild the network (atomically)."""
    if isinstance(model, EmoMLP):
        spec: dict[str, Any] = {"input": "codes", "mlp": asdict(model.settings)}
    else:
        image = image or EmotionImageSettings()
        spec = {"input": "images", "image_size": image.image_size,
                "input_normalization": model.input_normalization}
    spec.update(format=MODEL_FORMAT, name=name, classes=list(AFFECTNET_CLASSES))
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save({"state_dict": state, "emoca_emotion": spec}, tmp)
    return path


def load_emotion_model(path: str | os.PathLike) -> tuple[EmoMLP | EmotionImageNet, dict]:
    """Read a ``model.pt`` (weights-only unpickler) -> (network in eval mode, its spec).

    Raises:
        FileNotFoundError: no such file. ValueError: not a model.pt of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a weights-only torch file ({error})") from error
    spec = content.get("emoca_emotion") if isinstance(content, Mapping) else None
    if not isinstance(spec, Mapping) or spec.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not an emotion model file (expected format {MODEL_FORMAT})")
    try:
        if spec["input"] == "codes":
            model: EmoMLP | EmotionImageNet = EmoMLP(EmoMLPSettings(**spec["mlp"]))
        else:
            model = EmotionImageNet(len(spec["classes"]),
                                    input_normalization=spec["input_normalization"])
        model.load_state_dict(content["state_dict"])
    except (KeyError, TypeError, RuntimeError) as error:
        message = " ".join(str(error).split())[:300]
        raise ValueError(f"{path}: cannot rebuild the network ({message})") from error
    return model.eval(), dict(spec)


class _Predictions(NamedTuple):
    index: np.ndarray  # (N,) row numbers into the data module
    log_probs: np.ndarray  # (N, C)
    valence: np.ndarray  # (N,)
    arousal: np.ndarray  # (N,)


@torch.no_grad()
def _predict(module: EmotionModule, loader: DataLoader) -> _Predictions:
    module.eval()
    device = next(module.parameters()).device
    parts: dict[str, list[np.ndarray]] = {"index": [], "log_probs": [], "valence": [],
                                          "arousal": []}
    for batch in loader:
        batch = {name: value.to(device) for name, value in batch.items()}
        output = module(batch)
        parts["index"].append(batch["index"].cpu().numpy())
        parts["log_probs"].append(output.expr_logits.float().cpu().numpy())
        parts["valence"].append(output.valence.float().cpu().numpy())
        parts["arousal"].append(output.arousal.float().cpu().numpy())
    return _Predictions(*(np.concatenate(parts[name]) for name in _Predictions._fields))


def _write_predictions(path: Path, data: EmotionDataModule, predictions: _Predictions,
                       model_name: str) -> Path:
    rows = predictions.index
    arrays = data._arrays
    expression = arrays["expression"][rows].astype(np.float64)
    expression[expression < 0] = np.nan
    return write_emotion_predictions(
        path, data.keys[rows].tolist(), model_name, predictions.log_probs, predictions.valence,
        predictions.arousal, expression=expression, valence=arrays["valence"][rows],
        arousal=arrays["arousal"][rows], split=data.splits[rows].tolist(),
    )


def predict_emotion(
    model_path: str | os.PathLike,
    table: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "test",
    codes_table: str | os.PathLike | None = None,
    model_name: str | None = None,
    batch_size: int = 256,
    key_column: str = "image_id",
) -> Path:
    """Run a saved emotion network on the rows of ``table`` in ``split`` ("all": every row);
    write the predictions Parquet ``out`` (see :mod:`emoca_pipeline.evaluation.emotion_table`).

    The input kind (codes or images) is the one the network was trained on; codes come from
    ``table`` or from ``codes_table`` joined on ``key_column``. Labels are copied when the
    table has them (rows without valid labels are kept, their ground truth null).
    """
    model, spec = load_emotion_model(model_path)
    data = EmotionDataModule(
        table, spec["input"], eval_batch_size=batch_size,
        image_size=int(spec.get("image_size", 224)), codes_table=codes_table,
        key_column=key_column,
        mlp_settings=model.settings if isinstance(model, EmoMLP) else None,
        require_labels=False,
    )
    data.setup()
    predictions = _predict(EmotionModule(model), data.dataloader(split))
    return _write_predictions(Path(out), data, predictions, model_name or spec["name"])


# ---------------------------------------------------------------------------------------
# Training job


class EmotionTrainingResult(NamedTuple):
    """What :func:`train_emotion` wrote.

    model_path: ``<out>/model.pt``; predictions_path: ``<out>/predictions.parquet`` (test
    split); summary_path: ``<out>/training.json``; best_checkpoint: the Lightning checkpoint
    of the lowest validation loss; run_id: the MLflow run; test_metrics: whole-test-split
    metrics (keys as the ``val/`` metrics: v_pcc ... accuracy, macro_f1).
    """

    model_path: Path
    predictions_path: Path
    summary_path: Path
    best_checkpoint: Path | None
    run_id: str
    test_metrics: dict[str, float]


def _test_metrics(data: EmotionDataModule, predictions: _Predictions) -> dict[str, float]:
    rows = predictions.index
    arrays = data._arrays
    v = regression_metrics(predictions.valence, arrays["valence"][rows])
    a = regression_metrics(predictions.arousal, arrays["arousal"][rows])
    classes = ClassificationAccumulator(predictions.log_probs.shape[1])
    classes.update(predictions.log_probs, arrays["expression"][rows])
    e = classes.compute()
    return {"v_pcc": v.pcc, "v_ccc": v.ccc, "v_rmse": v.rmse, "v_sagr": v.sagr,
            "a_pcc": a.pcc, "a_ccc": a.ccc, "a_rmse": a.rmse, "a_sagr": a.sagr,
            "accuracy": e.accuracy, "macro_f1": e.macro_f1}


def train_emotion(
    config_file: str | os.PathLike,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    input: InputKind,
    codes_table: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    results_dir: str | os.PathLike = "results",
    experiment: str | None = None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> EmotionTrainingResult:
    """Train an emotion network on the train split, early-stopped on the val split.

    Args:
        config_file: YAML settings (:class:`EmotionTrainingSettings`).
        manifest: labelled Parquet table (see :class:`EmotionDataModule`).
        out_dir: folder for ``model.pt``, ``predictions.parquet``, ``training.json`` and
            ``checkpoints/`` (stale ``*.ckpt`` files there are removed first).
        input: "codes" (EmoMLP) or "images" (ResNet-50 network).
        codes_table: codes joined on ``image_id`` instead of the manifest's own.
        tracking_uri: MLflow URI; default ``sqlite:///<results_dir>/mlflow.db``.
        results_dir: the workflow's results folder (MLflow defaults only).
        experiment, run_name: default: the config's ``experiment`` and ``name``.
        parent_run_id: parent MLflow run (default: ``$EMOCA_MLFLOW_PARENT_RUN`` or on demand).
    """
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from emoca_pipeline.tracking import input_tags, log_artifact, log_params, make_mlflow_logger

    started = time.perf_counter()
    settings: EmotionTrainingSettings = load_emotion_settings(config_file)
    if input not in INPUT_KINDS:
        raise ValueError(f"input: expected 'codes' or 'images', got {input!r}")
    out = Path(out_dir)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    data = EmotionDataModule(
        manifest, input, batch_size=settings.batch_size,
        eval_batch_size=settings.eval_batch_size, balanced_sampling=settings.balanced_sampling,
        num_workers=settings.num_workers, image_size=settings.image.image_size,
        codes_table=codes_table, mlp_settings=settings.mlp, seed=settings.seed,
    )
    data.setup()
    sizes = data.split_sizes()
    for split in SPLITS:
        if sizes[split] < 2:
            raise ValueError(f"{manifest}: split {split!r} has {sizes[split]} usable row(s); "
                             "training needs train, val and test rows (>= 2 each)")
    model = build_emotion_model(input, settings.mlp, settings.image)
    loss = EmotionLoss(settings.va_loss, settings.expression_weight,
                       generator=torch.Generator().manual_seed(settings.seed))
    module = EmotionModule(model, loss, settings.learning_rate)

    name = run_name or settings.name
    logger = make_mlflow_logger(
        tracking_uri, results_dir, experiment or settings.experiment, name,
        parent_run_id=parent_run_id,
        tags={"emoca.job": "train_emotion", "emoca.input": input,
              **input_tags(manifest=manifest, codes=codes_table)},
        finish_on_teardown=False,
    )
    try:
        resolved = {"input": input, "manifest": str(Path(manifest).resolve()),
                    "codes_table": str(codes_table) if codes_table else None,
                    **settings_to_dict(settings),
                    "data": sizes}
        log_params(logger, resolved)
        checkpoints = out / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in checkpoints.glob("*.ckpt"):
            stale.unlink()
        checkpoint = ModelCheckpoint(
            dirpath=checkpoints, filename="epoch{epoch:03d}-val_loss{val/loss:.4f}",
            auto_insert_metric_name=False, monitor="val/loss", mode="min", save_top_k=1,
            save_last=False,  # one file: a ResNet-50 checkpoint with Adam state is 280 MB
            every_n_epochs=settings.checkpoint_every_n_epochs,
            save_weights_only=settings.checkpoint_weights_only,
        )
        stopping = EarlyStopping(monitor="val/loss", mode="min", patience=settings.patience,
                                 min_delta=settings.min_delta)
        batches = max(1, sizes["train"] // settings.batch_size)
        limit = settings.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else max(1, int(batches * limit))
        trainer = pl.Trainer(
            accelerator=settings.accelerator, devices=settings.devices,
            precision=settings.precision, max_epochs=settings.max_epochs,
            min_epochs=settings.min_epochs, max_steps=settings.max_steps,
            limit_train_batches=settings.limit_train_batches, logger=logger,
            callbacks=[checkpoint, stopping], enable_progress_bar=False,
            num_sanity_val_steps=0, log_every_n_steps=min(50, batches),
            default_root_dir=out, deterministic=False,
        )
        with warnings.catch_warnings():
            # num_workers=0 is deliberate for in-memory codes and small demos.
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(module, datamodule=data)

        best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
        if best is not None:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        else:
            log.warning("no validation ran (max_steps reached first?): saving the last weights")
        model_path = save_emotion_model(out / "model.pt", module.model, name, settings.image)
        predictions = _predict(module, data.dataloader("test"))
        predictions_path = _write_predictions(out / "predictions.parquet", data, predictions,
                                              name)
        test = _test_metrics(data, predictions)
        logger.log_metrics({f"test/{key}": value for key, value in test.items()},
                           step=trainer.global_step)
        summary = {
            "name": name, "input": input, "mlflow_run_id": logger.run_id,
            "mlflow_parent_run_id": logger.parent_run_id,
            "best_checkpoint": str(best) if best else None,
            "best_val_loss": float(checkpoint.best_model_score)
            if checkpoint.best_model_score is not None else None,
            "epochs": trainer.current_epoch, "steps": trainer.global_step,
            "stopped_early": bool(stopping.stopped_epoch),
            "data": sizes, "test": test,
            "seconds": round(time.perf_counter() - started, 2),
        }
        summary_path = out / "training.json"
        atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
        for path in (model_path, predictions_path, summary_path):
            log_artifact(logger, path)
    except BaseException:
        logger.finish("failed")
        raise
    logger.finish("success")
    return EmotionTrainingResult(model_path, predictions_path, summary_path, best,
                                 logger.run_id, test)

