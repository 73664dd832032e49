"""Training settings: small frozen dataclasses loaded from YAML files (``--config FILE``).

:func:`load_settings` maps a YAML mapping onto any dataclass whose fields are plain types
(bool, int, float, str, Literal, Optional, unions of these, ``dict[str, float]``) or nested
dataclasses; the EMOCA training settings reuse it. Every mistake is one ``ValueError`` line
naming the file and the key: unknown keys (with the known ones listed), wrong types, values
the dataclass's ``__post_init__`` rejects. Keys left out take the dataclass defaults.

YAML 1.1 reads ``1e-4`` as a string (it wants ``1.0e-4``); float fields accept such
strings when they parse as numbers, since that is what the user meant.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from emoca_pipeline.losses.emotion import VALossSettings
from emoca_pipeline.models.emotion import EmoMLPSettings

__all__ = [
    "EmotionImageSettings",
    "EmotionTrainingSettings",
    "load_emotion_settings",
    "load_settings",
    "settings_to_dict",
]

SettingsT = TypeVar("SettingsT")


@dataclass(frozen=True)
class EmotionImageSettings:
    """The image network's input (see :class:`~emoca_pipeline.models.emotion.EmotionImageNet`).

    image_size: side of the square face crop fed to the network (EMOCA: 224; smaller is
        faster on a CPU, ResNet-50's adaptive pooling takes >= 32).
    input_normalization: "none" (EMOCA: [0, 1] RGB as is) or "imagenet".
    weights: optional local state-dict file to start from (a torchvision ResNet-50 or this
        network's own); relative paths are relative to the config file's folder.
    """

    image_size: int = 224
    input_normalization: Literal["none", "imagenet"] = "none"
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image.image_size: must be >= 32, got {self.image_size}")


@dataclass(frozen=True)
class EmotionTrainingSettings:
    """Settings of one emotion-network training job (defaults: the EMOCA paper's).

    name: the model's name in MLflow, in prediction files and in the results table.
    seed: seed of weights, sampling and the shaken VA-loss weights.
    batch_size, eval_batch_size: training / evaluation batch sizes.
    learning_rate: Adam's learning rate.
    max_epochs, min_epochs, max_steps: training length (max_steps = -1: no step limit).
    limit_train_batches: batches per training epoch: a fraction (float <= 1) or a count (int).
    patience, min_delta: early stopping on the validation loss.
    checkpoint_every_n_epochs: consider saving the best checkpoint every n epochs only (a
        checkpoint is written whenever the validation loss improves; with small data and a
        big network that is most epochs).
    checkpoint_weights_only: checkpoints without optimiser state (a third of the size; no
        exact resume).
    balanced_sampling: draw training samples with 1 / (count of their class) weights.
    expression_weight: weight of the expression NLL against the VA loss.
    va_loss: the VA loss terms and their weighting scheme.
    accelerator, devices, precision: Lightning Trainer settings ("cpu"/"gpu"/"auto", a count
        or "auto", e.g. "32-true" or "bf16-mixed").
    num_workers: DataLoader worker processes.
    experiment: MLflow experiment name.
    mlp: EmoMLP architecture (``input: codes``).
    image: the image network's input (``input: images``).
    """

    name: str = "emotion"
    seed: int = 0
    batch_size: int = 64
    eval_batch_size: int = 256
    learning_rate: float = 1e-4
    max_epochs: int = 100
    min_epochs: int = 1
    max_steps: int = -1
    limit_train_batches: int | float = 1.0
    patience: int = 10
    min_delta: float = 0.0
    checkpoint_every_n_epochs: int = 1
    checkpoint_weights_only: bool = False
    balanced_sampling: bool = True
    expression_weight: float = 1.0
    va_loss: VALossSettings = field(default_factory=VALossSettings)
    accelerator: str = "cpu"
    devices: int | str = 1
    precision: str = "32-true"
    num_workers: int = 0
    experiment: str = "emoca-pipeline"
    mlp: EmoMLPSettings = field(default_factory=EmoMLPSettings)
    image: EmotionImageSettings = field(default_factory=EmotionImageSettings)

    def __post_init__(self) -> None:
        positive = ("batch_size", "eval_batch_size", "max_epochs", "min_epochs",
                    "checkpoint_every_n_epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.name or any(c in self.name for c in "/\\\n"):
            raise ValueError(f"name: must be a non-empty name without slashes, got {self.name!r}")
        if not (self.learning_rate > 0):
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate}")
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs ({self.min_epochs}) exceeds max_epochs "
                             f"({self.max_epochs})")
        if self.max_steps < -1 or self.max_steps == 0:
            raise ValueError(f"max_steps: must be -1 (no limit) or >= 1, got {self.max_steps}")
        limit = self.limit_train_batches
        if isinstance(limit, float) and not 0.0 < limit <= 1.0:
            raise ValueError(f"limit_train_batches: a fraction must lie in (0, 1], got {limit}")
        if isinstance(limit, int) and limit < 1:
            raise ValueError(f"limit_train_batches: a count must be >= 1, got {limit}")
        if self.patience < 1:
            raise ValueError(f"patience: must be >= 1, got {self.patience}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta: must be >= 0, got {self.min_delta}")
        if self.expression_weight < 0:
            raise ValueError(f"expression_weight: must be >= 0, got {self.expression_weight}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers: must be >= 0, got {self.num_workers}")
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ValueError(f"devices: expected a count or 'auto', got {self.devices!r}")
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError(f"devices: must be >= 1, got {self.devices}")
        if not self.experiment:
            raise ValueError("experiment: must be a non-empty MLflow experiment name")


# ---------------------------------------------------------------------------------------
# Generic loader


class _SettingsError(ValueError):
    """A problem at a key path; the loader prefixes the file name."""


def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is Literal:
        return " or ".join(repr(v) for v in typing.get_args(kind))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(kind))
    if kind is type(None):
        return "null"
    if origin is dict or origin is Mapping:
        return "a mapping"
    if dataclasses.is_dataclass(kind):
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        kind, getattr(kind, "__name__", str(kind))
    )


def _convert(value: Any, kind: Any, where: str) -> Any:
    """Check ``value`` against the type annotation ``kind``; return the converted value."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(kind)
        if value is None:
            if type(None) in args:
                return None
            raise _SettingsError(f"{where}: expected {_type_name(kind)}, got null")
        # Try exact kinds first (so 1 stays an int in int | float), then conversions.
        for arg in args:
            if arg is not type(None) and _is_exact(value, arg):
                return _convert(value, arg, where)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except _SettingsError:
                continue
        raise _SettingsError(f"{where}: expected {_type_name(kind)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise _SettingsError(f"{where}: expected {_type_name(kind)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise _SettingsError(f"{where}: expected a mapping, got {value!r}")
        return _build(kind, value, where + ".")
    if origin in (dict, Mapping):
        key_kind, value_kind = typing.get_args(kind)
        if not isinstance(value, Mapping):
            raise _SettingsError(f"{where}: expected a mapping, got {value!r}")
        return {
            _convert(k, key_kind, where): _convert(v, value_kind, f"{where}.{k}")
            for k, v in value.items()
        }
    if kind is bool:
        if not isinstance(value, bool):
            raise _SettingsError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _SettingsError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool):
            raise _SettingsError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _SettingsError(f"{where}: expected a number, got {value!r}")
    if kind is str:
        if not isinstance(value, str):
            raise _SettingsError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported settings type {kind!r}")  # a programming error


def _is_exact(value: Any, kind: Any) -> bool:
    if kind in (int, float, str, bool):
        return type(value) is kind
    if typing.get_origin(kind) is Literal:
        return value in typing.get_args(kind)
    return False


def _build(cls: type[SettingsT], values: Mapping[str, Any], prefix: str = "") -> SettingsT:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = [key for key in values if key not in fields]
    if unknown:
        section = f" in {prefix[:-1]}" if prefix else ""
        raise _SettingsError(f"unknown key {prefix}{unknown[0]!s}{section} "
                             f"(known: {', '.join(fields)})")
    kwargs = {key: _convert(value, hints[key], f"{prefix}{key}") for key, value in values.items()}
    try:
        return cls(**kwargs)
    except ValueError as error:
        message = str(error)
        if prefix and not message.startswith(prefix):
            message = f"{prefix[:-1]}: {message}"
        raise _SettingsError(message) from error


def load_settings(path: str | os.PathLike, cls: type[SettingsT]) -> SettingsT:
    """Read a YAML mapping from ``path`` into the dataclass ``cls``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not YAML, not a mapping, an unknown key, a wrong type or a bad value;
            one line starting with the file name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first = " ".join(str(error).split())
        raise ValueError(f"{path}: not valid YAML ({first})") from error
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    try:
        return _build(cls, values)
    except _SettingsError as error:
        raise ValueError(f"{path}: {error}") from None


def load_emotion_settings(path: str | os.PathLike) -> EmotionTrainingSettings:
    """:func:`load_settings` for :class:`EmotionTrainingSettings`; a relative
    ``image.weights`` path is made relative to the config file's folder."""
    settings = load_settings(path, EmotionTrainingSettings)
    weights = settings.image.weights
    if weights is not None and not Path(weights).is_absolute():
        image = dataclasses.replace(settings.image, weights=str(Path(path).parent / weights))
        settings = dataclasses.replace(settings, image=image)
    return settings


def settings_to_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass as a nested dict of plain values (for MLflow params, checkpoints)."""
    return {
        f.name: _plain(getattr(settings, f.name))
        for f in dataclasses.fields(settings)
    }


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return settings_to_dict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
