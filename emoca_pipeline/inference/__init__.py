"""Applying trained models: EMOCA reconstruction at scale (:mod:`.reconstruct`)."""

from emoca_pipeline.inference.reconstruct import (
    ReconstructResult,
    ReconstructSettings,
    load_model,
    read_reconstructions,
    reconstruct,
    shard_file,
)

__all__ = [
    "ReconstructResult",
    "ReconstructSettings",
    "load_model",
    "read_reconstructions",
    "reconstruct",
    "shard_file",
]
