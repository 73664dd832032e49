"""Settings of an emotion-network training job (``emoca train emotion --config FILE``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from emoca_pipeline.losses.emotion import VALossSettings
from emoca_pipeline.models.emotion import EmoMLPSettings
from emoca_pipeline.training.fit import FitSettings
from emoca_pipeline.training.settings import SettingsModel, load_settings

__all__ = ["EmotionImageSettings", "EmotionTrainingSettings", "load_emotion_settings"]


class EmotionImageSettings(SettingsModel):
    """The image network's input (see :class:`~emoca_pipeline.models.emotion.EmotionImageNet`).

    image_size: side of the square face crop fed to the network (EMOCA: 224; smaller is
        faster on a CPU, ResNet-50's adaptive pooling takes >= 32).
    input_normalization: "none" (EMOCA: [0, 1] RGB as is) or "imagenet".
    backbone: "frnet" (the original EmoCnn's VGGFace2 ResNet-50), "torchvision" (ResNet-50)
        or "resnet18" (torchvision's ResNet-18: a lighter option for CPU demos; not EMOCA's).
    weights: optional local state-dict file to start from (a torchvision ResNet-50 or this
        network's own); relative paths are relative to the config file's folder.
    """

    image_size: int = Field(224, ge=32)
    input_normalization: Literal["none", "imagenet"] = "none"
    backbone: Literal["frnet", "torchvision", "resnet18"] = "frnet"
    weights: str | None = None


class EmotionTrainingSettings(FitSettings):
    """Settings of one emotion-network training job (defaults: the EMOCA paper's), on top
    of the fit loop's (:class:`~emoca_pipeline.training.fit.FitSettings`).

    batch_size, eval_batch_size: training / evaluation batch sizes.
    learning_rate: Adam's learning rate.
    balanced_sampling: draw training samples with 1 / (count of their class) weights.
    expression_weight: weight of the expression NLL against the VA loss.
    va_loss: the VA loss terms and their weighting scheme.
    mlp: EmoMLP architecture (``input: codes``).
    image: the image network's input (``input: images``).
    """

    name: str = Field("emotion", pattern=r"^[^/\\\n]+$")
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-4, gt=0.0)
    balanced_sampling: bool = True
    expression_weight: float = Field(1.0, ge=0.0)
    va_loss: VALossSettings = Field(default_factory=VALossSettings)
    mlp: EmoMLPSettings = Field(default_factory=EmoMLPSettings)
    image: EmotionImageSettings = Field(default_factory=EmotionImageSettings)


def load_emotion_settings(path: str | os.PathLike) -> EmotionTrainingSettings:
    """:func:`~emoca_pipeline.training.settings.load_settings` for
    :class:`EmotionTrainingSettings`; a relative ``image.weights`` path is made relative to
    the config file's folder."""
    settings = load_settings(path, EmotionTrainingSettings)
    weights = settings.image.weights
    if weights is not None and not Path(weights).is_absolute():
        image = settings.image.model_copy(update={"weights": str(Path(path).parent / weights)})
        settings = settings.model_copy(update={"image": image})
    return settings
