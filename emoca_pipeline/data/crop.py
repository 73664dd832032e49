"""Face crops as in DECA/EMOCA: a square around the face, scaled by 1.25, warped to 224.

The square comes from one of two sources, with the original's constants
(``bbox2point`` in DECA's ``decalib/datasets`` and EMOCA's ``gdl/datasets/ImageDatasetHelpers``):

- 68 landmarks (``'kpt68'``): side = mean(width, height) of the landmark box * 1.1, centred
  on the box centre;
- a detector box (``'bbox'``): side = mean(width, height) of the box, centre moved down by
  0.12 * side (detector boxes sit higher on the face than landmark boxes).

The side is then multiplied by ``scale`` (1.25) and, as in the original, truncated to an
integer (``int(old_size * scale)``). The crop maps the square's corners
``(cx - s/2, cy - s/2)``, ``(cx - s/2, cy + s/2)``, ``(cx + s/2, cy - s/2)`` onto
``(0, 0)``, ``(0, out - 1)``, ``(out - 1, 0)``: a similarity with scale ``(out - 1) / s``
(what the original's ``skimage.transform.estimate_transform('similarity', ...)`` returns).

Coordinates are pixels with integer values at pixel centres, x to the right, y down (the
convention of skimage and OpenCV).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "CropBox",
    "CropSettings",
    "crop_box_from_bbox",
    "crop_box_from_landmarks",
    "crop_transform",
    "transform_points",
    "warp_crop",
]


@dataclass(frozen=True)
class CropSettings:
    """Constants of the crop; the defaults are EMOCA's.

    Attributes:
        out_size: side of the square output crop in pixels.
        scale: factor applied to the face square before cropping.
        landmark_size_factor: landmark box -> face square size factor ('kpt68').
        bbox_center_shift: downward shift of a detector box centre, in units of its size.
        integer_size: truncate the scaled size to an integer as the original does.
    """

    out_size: int = 224
    scale: float = 1.25
    landmark_size_factor: float = 1.1
    bbox_center_shift: float = 0.12
    integer_size: bool = True


class CropBox(NamedTuple):
    """A square crop region in original-image pixels.

    Attributes:
        center: ``(2,)`` float64, (x, y) of the square's centre.
        size: side of the square (after ``scale``).
    """

    center: np.ndarray
    size: float


def crop_box_from_landmarks(
    landmarks: np.ndarray, settings: CropSettings | None = None
) -> CropBox:
    """The crop square from landmarks (the original's ``'kpt68'`` rule).

    Args:
        landmarks: ``(K, 2)`` pixel coordinates (x, y), K >= 2; extra columns (e.g. z) are
            ignored.
        settings: crop constants (default: EMOCA's).

    Raises:
        ValueError: wrong shape, non-finite values, or a degenerate (zero-area) box.
    """
    settings = settings or CropSettings()
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] < 2 or points.shape[1] < 2:
        raise ValueError(f"landmarks must have shape (K>=2, 2), got {points.shape}")
    points = points[:, :2]
    if not np.isfinite(points).all():
        raise ValueError("landmarks contain NaN or infinite values")
    left, top = points.min(axis=0)
    right, bottom = points.max(axis=0)
    return _square(left, top, right, bottom, settings.landmark_size_factor, 0.0, settings)


def crop_box_from_bbox(bbox: np.ndarray, settings: CropSettings | None = None) -> CropBox:
    """The crop square from a detector box (the original's ``'bbox'`` rule).

    Args:
        bbox: ``(4,)`` (x0, y0, x1, y1) in pixels, x1 > x0 and y1 > y0.
        settings: crop constants (default: EMOCA's).

    Raises:
        ValueError: wrong shape, non-finite values, or x1 <= x0 or y1 <= y0.
    """
    settings = settings or CropSettings()
    box = np.asarray(bbox, dtype=np.float64).reshape(-1)
    if box.shape != (4,):
        raise ValueError(f"bbox must have 4 values (x0, y0, x1, y1), got shape {box.shape}")
    if not np.isfinite(box).all():
        raise ValueError(f"bbox contains NaN or infinite values: {box.tolist()}")
    left, top, right, bottom = box
    return _square(left, top, right, bottom, 1.0, settings.bbox_center_shift, settings)


def _square(
    left: float, top: float, right: float, bottom: float, size_factor: float,
    center_shift: float, settings: CropSettings,
) -> CropBox:
    if right <= left or bottom <= top:
        raise ValueError(
            f"degenerate face box (x0={left}, y0={top}, x1={right}, y1={bottom}): "
            "it needs a positive width and height"
        )
    # The original's arithmetic, in its order (right - w/2 rather than (l + r)/2).
    old_size = (right - left + bottom - top) / 2 * size_factor
    center = np.array(
        [right - (right - left) / 2.0, bottom - (bottom - top) / 2.0 + old_size * center_shift]
    )
    size = old_size * settings.scale
    if settings.integer_size:
        size = float(int(size))
        if size < 1:
            raise ValueError(f"face box too small for a crop: size {old_size * settings.scale}")
    return CropBox(center, float(size))


def crop_transform(center: np.ndarray, size: float, out_size: int = 224) -> np.ndarray:
    """The similarity mapping original pixel coordinates to crop pixel coordinates.

    Equal (to rounding) to the original's ``estimate_transform('similarity', src, dst).params``
    with ``src`` the square's corners (top-left, bottom-left, top-right) and
    ``dst = [[0, 0], [0, out_size - 1], [out_size - 1, 0]]``.

    Args:
        center: ``(2,)`` (x, y) of the square's centre.
        size: side of the square in original pixels, > 0.
        out_size: side of the crop in pixels.

    Returns:
        ``(3, 3)`` float64 homogeneous matrix ``T`` with ``[u, v, 1] = T @ [x, y, 1]``.
    """
    center = np.asarray(center, dtype=np.float64).reshape(-1)
    if center.shape != (2,) or not np.isfinite(center).all():
        raise ValueError(f"center must be 2 finite values (x, y), got {center.tolist()}")
    if not (np.isfinite(size) and size > 0):
        raise ValueError(f"crop size must be positive and finite, got {size}")
    if out_size < 2:
        raise ValueError(f"out_size must be at least 2, got {out_size}")
    k = (out_size - 1) / float(size)
    corner = center - float(size) / 2.0  # maps to (0, 0)
    return np.array(
        [[k, 0.0, -k * corner[0]], [0.0, k, -k * corner[1]], [0.0, 0.0, 1.0]], dtype=np.float64
    )


def transform_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Apply a ``(3, 3)`` homogeneous 2D transform to points.

    Args:
        points: ``(N, 2)`` (x, y); extra columns are ignored.
        transform: ``(3, 3)``, e.g. from :func:`crop_transform`; use ``np.linalg.inv`` of it
            to map crop coordinates back to the original image.

    Returns:
        ``(N, 2)`` float64 transformed points.
    """
    matrix = np.asarray(transform, dtype=np.float64)
    if matrix.shape != (3, 3):
        raise ValueError(f"transform must have shape (3, 3), got {matrix.shape}")
    xy = np.asarray(points, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise ValueError(f"points must have shape (N, 2), got {xy.shape}")
    homogeneous = np.concatenate([xy[:, :2], np.ones((xy.shape[0], 1))], axis=1)
    mapped = homogeneous @ matrix.T
    return mapped[:, :2] / mapped[:, 2:3]


def warp_crop(image: np.ndarray, transform: np.ndarray, out_size: int = 224) -> np.ndarray:
    """Cut the crop out of an image: bicubic resampling, black outside the image.

    Uses OpenCV's ``warpAffine`` with ``INTER_CUBIC`` (Keys cubic convolution, a = -0.75).
    The original used ``skimage.transform.warp(order=3)`` (a cubic B-spline). On the
    astronaut the two differ by 0.6 grey levels on average (99th percentile about 4, maximum
    about 12 at the sharpest edges; ``tests/test_crop.py``), and OpenCV is about 5x faster
    (1.6 ms vs 8.7 ms for a 224 crop of a 512 x 512 image, one thread). Like the original,
    it does not low-pass before shrinking a large face.

    Args:
        image: ``(H, W, 3)`` (or ``(H, W)``/``(H, W, C)``) uint8 or float32 image.
        transform: ``(3, 3)`` original -> crop similarity from :func:`crop_transform`.
        out_size: side of the output crop.

    Returns:
        ``(out_size, out_size, C)`` array of the input dtype (uint8 values saturate).
    """
    import cv2

    array = np.asarray(image)
    if array.ndim not in (2, 3) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image must have shape (H, W) or (H, W, C), got {array.shape}")
    matrix = np.asarray(transform, dtype=np.float64)
    if matrix.shape != (3, 3):
        raise ValueError(f"transform must have shape (3, 3), got {matrix.shape}")
    if array.dtype not in (np.uint8, np.float32):
        array = array.astype(np.float32)
    crop = cv2.warpAffine(
        np.ascontiguousarray(array), matrix[:2], (out_size, out_size),
        flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    if array.ndim == 3 and crop.ndim == 2:  # OpenCV drops a trailing channel axis of 1
        crop = crop[..., None]
    return crop
