"""Neural network modules."""

from emoca_pipeline.models.emotion import (
    AFFECTNET_CLASSES,
    EmoMLP,
    EmoMLPSettings,
    EmotionImageNet,
    EmotionOutput,
    filter_affectnet_labels,
)

__all__ = [
    "AFFECTNET_CLASSES",
    "EmoMLP",
    "EmoMLPSettings",
    "EmotionImageNet",
    "EmotionOutput",
    "filter_affectnet_labels",
]
