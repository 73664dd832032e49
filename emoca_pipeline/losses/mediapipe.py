"""EMOCA v2's MediaPipe landmark losses on the 105 embedded MediaPipe points.

Ported from ``gdl/layers/losses/MediaPipeLandmarkLosses.py`` (EMOCA @ fef5472). The FLAME
model projects 105 points (``mediapipe_landmark_embedding.npz``); the detector gives the
478-point MediaPipe mesh, of which the loss uses the same 105 indices in the same order
(:data:`~emoca_pipeline.assets.landmarks.MEDIAPIPE_LANDMARK_INDICES`, the original's
``EMBEDDING_INDICES``). :func:`mediapipe_targets` does that selection; every loss here takes
predicted and target points both as (N, 105, 2+) in the crop's [-1, 1] frame.

Terms (each the original's, unweighted):

* :func:`mediapipe_landmark_loss`: mean L1 over points and x, y (``landmark_loss``);
* eye closure (``eyed_loss``): pairs of upper/lower eyelid points. The original sorts the
  upper and the lower eyelid index lists of both eyes separately before pairing them, which
  pairs e.g. 157 with 7 instead of the intended 157 with 154; EMOCA v2 was trained with that
  pairing and it is kept here (:data:`MEDIAPIPE_EYELID_PAIRS`);
* lip distance (``lipd_loss``): outer and inner upper/lower lip lines, 18 pairs;
* mouth corners (``mouth_corner_loss``): (78, 308) inner and (61, 291) outer corners.

The relative terms are the mean over images and pairs of ``| |p_a - p_b| - |t_a - t_b| |``
(:func:`~emoca_pipeline.losses.emoca.relative_distance_loss`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from emoca_pipeline.assets.landmarks import MEDIAPIPE_LANDMARK_INDICES

__all__ = [
    "MEDIAPIPE_EYELID_PAIRS",
    "MEDIAPIPE_LIP_PAIRS",
    "MEDIAPIPE_MESH_POINTS",
    "MEDIAPIPE_MOUTH_CORNER_PAIRS",
    "check_mediapipe_inputs",
    "mediapipe_eye_distance_loss",
    "mediapipe_landmark_loss",
    "mediapipe_lip_distance_loss",
    "mediapipe_mouth_corner_loss",
    "mediapipe_targets",
]

#: Points of the full MediaPipe FaceMesh (with irises) the manifest stores.
MEDIAPIPE_MESH_POINTS = 478

# The original's lists, in MediaPipe mesh indices (upper/lower in correspondence).
_LEFT_UPPER_EYELID = (398, 384, 385, 386, 387, 388, 466)
_LEFT_LOWER_EYELID = (382, 381, 380, 374, 373, 390, 249)
_RIGHT_UPPER_EYELID = (246, 161, 160, 159, 158, 157, 173)
_RIGHT_LOWER_EYELID = (7, 163, 144, 145, 153, 154, 155)
_UPPER_INNER_LIP = (191, 80, 81, 82, 13, 312, 311, 310, 415)
_LOWER_INNER_LIP = (95, 88, 178, 87, 14, 317, 402, 318, 324)
_UPPER_OUTER_LIP = (185, 40, 39, 37, 0, 267, 269, 270, 409)
_LOWER_OUTER_LIP = (146, 91, 181, 84, 17, 314, 405, 321, 375)
_RIGHT_INNER_LIP_CORNER, _LEFT_INNER_LIP_CORNER = 78, 308
_RIGHT_OUTER_LIP_CORNER, _LEFT_OUTER_LIP_CORNER = 61, 291


def _positions(mesh_pairs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """MediaPipe mesh index pairs -> index pairs into the 105 embedded points."""
    where = {int(mesh): pos for pos, mesh in enumerate(MEDIAPIPE_LANDMARK_INDICES)}
    return tuple((where[a], where[b]) for a, b in mesh_pairs)


#: Eye-closure pairs as the original forms them (sorted upper vs sorted lower, both eyes),
#: as positions in the 105 points.
MEDIAPIPE_EYELID_PAIRS: tuple[tuple[int, int], ...] = _positions(list(zip(
    sorted(_LEFT_UPPER_EYELID + _RIGHT_UPPER_EYELID),
    sorted(_LEFT_LOWER_EYELID + _RIGHT_LOWER_EYELID), strict=True)))
#: Outer then inner lip pairs (upper, lower), positions in the 105 points.
MEDIAPIPE_LIP_PAIRS: tuple[tuple[int, int], ...] = _positions(list(zip(
    _UPPER_OUTER_LIP + _UPPER_INNER_LIP, _LOWER_OUTER_LIP + _LOWER_INNER_LIP, strict=True)))
#: Inner then outer mouth corners (right, left), positions in the 105 points.
MEDIAPIPE_MOUTH_CORNER_PAIRS: tuple[tuple[int, int], ...] = _positions(
    [(_RIGHT_INNER_LIP_CORNER, _LEFT_INNER_LIP_CORNER),
     (_RIGHT_OUTER_LIP_CORNER, _LEFT_OUTER_LIP_CORNER)])


def mediapipe_targets(mesh_points: Tensor | np.ndarray) -> Tensor:
    """Select the 105 embedded points from detected 478-point MediaPipe meshes.

    mesh_points: (N, 478, D) with D >= 2, or (N, 956) x, y interleaved (the manifest's
    ``mediapipe_landmarks`` column), in the crop's [-1, 1] frame. Returns (N, 105, 2).
    """
    points = torch.as_tensor(mesh_points)
    if points.ndim == 2 and points.shape[1] == 2 * MEDIAPIPE_MESH_POINTS:
        points = points.reshape(points.shape[0], MEDIAPIPE_MESH_POINTS, 2)
    if points.ndim != 3 or points.shape[1] != MEDIAPIPE_MESH_POINTS or points.shape[2] < 2:
        raise ValueError(f"MediaPipe landmarks: expected (N, {MEDIAPIPE_MESH_POINTS}, 2) or "
                         f"(N, {2 * MEDIAPIPE_MESH_POINTS}), got {tuple(points.shape)}")
    index = torch.as_tensor(MEDIAPIPE_LANDMARK_INDICES, device=points.device)
    return points[:, index, :2]


def _check(predicted: Tensor, target: Tensor) -> None:
    count = len(MEDIAPIPE_LANDMARK_INDICES)
    for name, value in (("predicted", predicted), ("target", target)):
        if value.ndim != 3 or value.shape[1] != count or value.shape[2] < 2:
            raise ValueError(f"{name} MediaPipe points: expected (N, {count}, 2), got "
                             f"{tuple(value.shape)} (select the 105 points of a 478-point "
                             "mesh with mediapipe_targets)")
    if predicted.shape[0] != target.shape[0]:
        raise ValueError(f"MediaPipe points: batch sizes differ, {predicted.shape[0]} "
                         f"predicted vs {target.shape[0]} target")


def mediapipe_landmark_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean L1 between projected (N, 105, 2) and detected (N, 105, 2) MediaPipe points."""
    _check(predicted, target)
    return (predicted[..., :2] - target[..., :2]).abs().mean()


def _relative(predicted: Tensor, target: Tensor, pairs: tuple[tuple[int, int], ...]) -> Tensor:
    from emoca_pipeline.losses.emoca import relative_distance_loss

    _check(predicted, target)
    return relative_distance_loss(predicted, target, pairs)


def mediapipe_eye_distance_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Eye closure on :data:`MEDIAPIPE_EYELID_PAIRS` (14 pairs). Shapes (N, 105, 2)."""
    return _relative(predicted, target, MEDIAPIPE_EYELID_PAIRS)


def mediapipe_lip_distance_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Lip opening on :data:`MEDIAPIPE_LIP_PAIRS` (18 pairs). Shapes (N, 105, 2)."""
    return _relative(predicted, target, MEDIAPIPE_LIP_PAIRS)


def mediapipe_mouth_corner_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Mouth width on :data:`MEDIAPIPE_MOUTH_CORNER_PAIRS` (2 pairs). Shapes (N, 105, 2)."""
    return _relative(predicted, target, MEDIAPIPE_MOUTH_CORNER_PAIRS)


def check_mediapipe_inputs(weights: Any, mediapipe_landmarks: np.ndarray | None, *,
                           model_has_mediapipe: bool, source: str) -> None:
    """Fail before training when a MediaPipe term is on but its inputs are missing.

    Args:
        weights: a :class:`~emoca_pipeline.losses.emoca.CoarseLossWeights` (its
            ``mediapipe_*`` fields are read).
        mediapipe_landmarks: the training table's ``mediapipe_landmarks`` column as an
            (N, 956) or (N, 478, 2) array, or None when the table has no such column. The
            manifest writes NaN for faces the MediaPipe detector did not process.
        model_has_mediapipe: whether the FLAME model was built with
            ``mediapipe_landmark_embedding.npz`` (so it projects the 105 points).
        source: what to name in the message (the manifest path).

    Raises:
        ValueError: one line naming the weight and the missing input.
    """
    on = {name: value for name, value in vars(weights).items()
          if name.startswith("mediapipe_") and value > 0}
    if not on:
        return
    first = f"{next(iter(on))} = {on[next(iter(on))]}"
    if mediapipe_landmarks is None:
        raise ValueError(f"{source}: {first} needs a 'mediapipe_landmarks' column (478 "
                         "MediaPipe points per face); detect with MediaPipe or set the "
                         "mediapipe_* weights to 0")
    points = np.asarray(mediapipe_landmarks, dtype=np.float64)
    missing = int((~np.isfinite(points.reshape(len(points), -1))).any(axis=1).sum())
    if missing:
        raise ValueError(f"{source}: {first} needs MediaPipe points for every face, "
                         f"{missing} of {len(points)} rows have none (NaN); detect with "
                         "MediaPipe, drop those rows, or set the mediapipe_* weights to 0")
    if not model_has_mediapipe:
        raise ValueError(f"{source}: {first} needs the FLAME MediaPipe embedding "
                         "(mediapipe_landmark_embedding.npz) in the model assets")
