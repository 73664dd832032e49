"""Data stage building blocks: face crops and landmarkers.

Heavy backends (MediaPipe, face-alignment) are imported only when a landmarker is built.
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
