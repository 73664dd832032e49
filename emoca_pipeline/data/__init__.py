"""Data stage building blocks: face crops and landmarkers.

Heavy backends (MediaPipe, face-alignment) are imported only when a landmarker is built.
The stage's modules, each depending only on those above it:

- :mod:`~emoca_pipeline.data.schema`: Arrow schemas, ``SPLITS``, fixed-size list helpers;
- :mod:`~emoca_pipeline.data.affectnet`: AffectNet's classes, label filter and CSV files;
- :mod:`~emoca_pipeline.data.labels`: label and landmark tables of the datasets;
- :mod:`~emoca_pipeline.data.plan`: the sorted input listing and its shards;
- :mod:`~emoca_pipeline.data.crop`, :mod:`~emoca_pipeline.data.landmarks`: crops, landmarkers;
- :mod:`~emoca_pipeline.data.chunk`: detection of one chunk of images (runs on workers);
- :mod:`~emoca_pipeline.data.detect`: the detection stage (shards, resume, Dask, summary);
- :mod:`~emoca_pipeline.data.manifest`: detections joined with labels and splits.
"""

from emoca_pipeline.data.crop import (
    CropBox,
    CropSettings,
    crop_box_from_bbox,
    crop_box_from_landmarks,
    crop_transform,
    transform_points,
    warp_crop,
)
from emoca_pipeline.data.landmarks import (
    IBUG68_MIRROR,
    MEDIAPIPE_TO_68,
    FaceDetection,
    FaceSearch,
    FanLandmarker,
    FanSettings,
    GroundTruthLandmarker,
    Landmarker,
    LandmarksNotFoundError,
    MediaPipeLandmarker,
    MediaPipeSettings,
    MissingWeightsError,
    fan_weight_files,
    make_landmarker,
    mediapipe_to_68,
)

__all__ = [
    "IBUG68_MIRROR",
    "MEDIAPIPE_TO_68",
    "CropBox",
    "CropSettings",
    "FaceDetection",
    "FaceSearch",
    "FanLandmarker",
    "FanSettings",
    "GroundTruthLandmarker",
    "Landmarker",
    "LandmarksNotFoundError",
    "MediaPipeLandmarker",
    "MediaPipeSettings",
    "MissingWeightsError",
    "crop_box_from_bbox",
    "crop_box_from_landmarks",
    "crop_transform",
    "fan_weight_files",
    "make_landmarker",
    "mediapipe_to_68",
    "transform_points",
    "warp_crop",
]
