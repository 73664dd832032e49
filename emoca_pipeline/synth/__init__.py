"""A synthetic, labelled face dataset rendered from FLAME-format assets."""

from emoca_pipeline.synth.dataset import SYNTHETIC_SCHEMA, SynthSettings, generate_synthetic_dataset
from emoca_pipeline.synth.labels import emotion_labels

__all__ = ["SYNTHETIC_SCHEMA", "SynthSettings", "emotion_labels", "generate_synthetic_dataset"]
