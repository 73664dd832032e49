"""A check of a FLAME asset folder: what a user runs before pointing training at it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from emoca_pipeline.flame.model import create

__all__ = ["check_flame_assets"]


def check_flame_assets(
    assets: str | os.PathLike, n_shape: int = 100, n_exp: int = 50
) -> dict[str, Any]:
    """Load the assets with the safe loader, run one neutral and one posed forward pass.

    Returns:
        A JSON-ready summary: sizes, landmark layout, and the extent of the neutral head.

    Raises:
        ValueError: the forward pass gives non-finite vertices or landmarks.
    """
    layer = create(assets, n_shape=n_shape, n_exp=n_exp, dtype=torch.float64)
    neutral = layer(
        torch.zeros(1, n_shape, dtype=torch.float64),
        torch.zeros(1, n_exp, dtype=torch.float64),
        torch.zeros(1, 6, dtype=torch.float64),
    )
    posed = layer(
        torch.full((1, n_shape), 0.5, dtype=torch.float64),
        torch.full((1, n_exp), 0.5, dtype=torch.float64),
        torch.tensor([[0.0, 0.3, 0.0, 0.2, 0.0, 0.0]], dtype=torch.float64),
    )
    for name, out in (("neutral", neutral), ("posed", posed)):
        for field in ("vertices", "landmarks2d", "landmarks3d"):
            if not torch.isfinite(getattr(out, field)).all():
                raise ValueError(f"{layer.source}: {name} forward pass gives non-finite {field}")
    verts = neutral.vertices[0]
    return {
        "model": str(Path(layer.source)),
        "vertices": layer.num_vertices,
        "faces": int(layer.faces.shape[0]),
        "joints": layer.num_joints,
        "n_shape": n_shape,
        "n_exp": n_exp,
        "landmarks": 68,
        "mediapipe_landmarks": int(layer.mp_lmk_faces.shape[0]) if layer.has_mediapipe else 0,
        "extent_m": [round(float(v), 4) for v in (verts.max(0).values - verts.min(0).values)],
    }
