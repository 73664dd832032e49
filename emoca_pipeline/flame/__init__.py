"""FLAME: the 3D head model of EMOCA, read from the official asset formats.

    >>> from emoca_pipeline import flame
    >>> layer = flame.create("assets/procedural", n_shape=100, n_exp=50)
    >>> out = layer(shape, expression, pose)          # out.vertices: (N, V, 3)
"""

from emoca_pipeline.flame.io import (
    FlameAssetError,
    FlameModelData,
    LandmarkEmbedding,
    MediaPipeEmbedding,
    drop_leading_ones,
    load_flame_model,
    load_landmark_embedding,
    load_mediapipe_embedding,
)
from emoca_pipeline.flame.model import FLAME, FlameOutput, create, dynamic_contour_rows
from emoca_pipeline.flame.safe_pickle import UnsafePickleError

__all__ = [
    "FLAME",
    "FlameAssetError",
    "FlameModelData",
    "FlameOutput",
    "LandmarkEmbedding",
    "MediaPipeEmbedding",
    "UnsafePickleError",
    "create",
    "drop_leading_ones",
    "dynamic_contour_rows",
    "load_flame_model",
    "load_landmark_embedding",
    "load_mediapipe_embedding",
]
