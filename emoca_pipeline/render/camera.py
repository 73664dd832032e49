"""DECA's orthographic camera and the screen <-> pixel conventions of the renderer.

A camera is ``cam = (s, tx, ty)`` per image. DECA projects a point ``X`` to
``s * (X_x + tx, X_y + ty, X_z)`` (``batch_orth_proj``; z is scaled by ``s`` too) and then
negates y and z, so that +y points down the image and smaller z is nearer to the viewer.
The result lives in the renderer's screen space: ``x, y`` in [-1, 1] across the image,
with the pixel-centre convention of :mod:`emoca_pipeline.render.rasterizer`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emoca_pipeline.render.rasterizer import _parse_image_size

__all__ = [
    "batch_orth_proj",
    "ndc_to_pixels",
    "orthographic_project",
    "pixels_to_ndc",
    "project_landmarks",
]


def _check_points_and_cam(points: Tensor, cam: Tensor) -> None:
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (N, P, 3), got {tuple(points.shape)}")
    if cam.ndim != 2 or cam.shape[-1] != 3:
        raise ValueError(f"cam must be (N, 3) = (s, tx, ty), got {tuple(cam.shape)}")
    if cam.shape[0] != points.shape[0]:
        raise ValueError(
            f"cam has batch size {cam.shape[0]} but points have batch size {points.shape[0]}"
        )


def batch_orth_proj(points: Tensor, cam: Tensor) -> Tensor:
    """DECA's ``batch_orth_proj``: ``s * (x + tx, y + ty, z)``, no axis flips.

    Args:
        points: ``(N, P, 3)``.
        cam: ``(N, 3)`` = ``(s, tx, ty)``.

    Returns:
        ``(N, P, 3)``.
    """
    _check_points_and_cam(points, cam)
    scale = cam[:, None, 0:1]
    shifted_xy = points[..., :2] + cam[:, None, 1:]
    return scale * torch.cat([shifted_xy, points[..., 2:]], dim=-1)


def orthographic_project(points: Tensor, cam: Tensor) -> Tensor:
    """Project to the renderer's screen space: :func:`batch_orth_proj`, then y and z negated.

    This is DECA's ``trans_verts``/``landmarks3d`` projection
    (``trans_verts[:, :, 1:] = -trans_verts[:, :, 1:]``).

    Args:
        points: ``(N, P, 3)`` world-space points (FLAME vertices or landmarks).
        cam: ``(N, 3)`` = ``(s, tx, ty)``.

    Returns:
        ``(N, P, 3)``: x right and y down in [-1, 1] across the image, z smaller = nearer.
    """
    projected = batch_orth_proj(points, cam)
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=projected.dtype, device=projected.device)
    return projected * flip


def project_landmarks(landmarks: Tensor, cam: Tensor, keep_depth: bool = False) -> Tensor:
    """DECA's 2D (or 3D) landmark projection.

    Args:
        landmarks: ``(N, L, 3)`` world-space landmarks.
        cam: ``(N, 3)`` = ``(s, tx, ty)``.
        keep_depth: return the flipped z as a third column (DECA's ``landmarks3d``).

    Returns:
        ``(N, L, 2)`` (or ``(N, L, 3)``) in the renderer's [-1, 1] screen space; convert
        with :func:`ndc_to_pixels`.
    """
    projected = orthographic_project(landmarks, cam)
    return projected if keep_depth else projected[..., :2]


def _size_vector(image_size: int | tuple[int, int], like: Tensor) -> Tensor:
    height, width = _parse_image_size(image_size)
    return torch.tensor([width, height], dtype=like.dtype, device=like.device)


def ndc_to_pixels(points: Tensor, image_size: int | tuple[int, int]) -> Tensor:
    """Screen coordinates (x right, y down, [-1, 1]) to pixel coordinates ``(col, row)``.

    ``col = (x + 1) / 2 * W - 0.5`` and ``row = (y + 1) / 2 * H - 0.5``: integer values are
    pixel centres (the OpenCV / scikit-image convention, which crop transforms use).

    Args:
        points: ``(..., 2)`` or ``(..., 3)``; a third column is passed through.
        image_size: int or ``(H, W)``.

    Returns:
        Same shape as ``points``.
    """
    if points.shape[-1] not in (2, 3):
        raise ValueError(f"points must end in 2 or 3 coordinates, got {tuple(points.shape)}")
    size = _size_vector(image_size, points)
    xy = (points[..., :2] + 1.0) * 0.5 * size - 0.5
    return torch.cat([xy, points[..., 2:]], dim=-1)


def pixels_to_ndc(points: Tensor, image_size: int | tuple[int, int]) -> Tensor:
    """Inverse of :func:`ndc_to_pixels`.

    Args:
        points: ``(..., 2)`` or ``(..., 3)`` pixel coordinates ``(col, row[, z])``.
        image_size: int or ``(H, W)``.

    Returns:
        Same shape as ``points``.
    """
    if points.shape[-1] not in (2, 3):
        raise ValueError(f"points must end in 2 or 3 coordinates, got {tuple(points.shape)}")
    size = _size_vector(image_size, points)
    xy = (points[..., :2] + 0.5) * 2.0 / size - 1.0
    return torch.cat([xy, points[..., 2:]], dim=-1)
