"""The whole FLAME asset folder in one call: model, albedo, UV template, masks.

File names are the official ones (``generic_model.pkl``, ``head_template.obj``, ...); DECA
and EMOCA read the same set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch

from emoca_pipeline.flame.io import (
    BFM_TEXTURE_FILE,
    DISPLACEMENT_FILE,
    FACE_EYE_MASK_FILE,
    FACE_MASK_FILE,
    TEMPLATE_FILE,
    TEXTURE_FILE,
    FlameAssetError,
)
from emoca_pipeline.flame.model import FLAME, create
from emoca_pipeline.flame.texture import FlameTexture, load_flame_texture
from emoca_pipeline.io.obj import ObjMesh, load_obj

__all__ = [
    "FlameAssets",
    "load_flame_assets",
    "make_renderer",
]


class FlameAssets(NamedTuple):
    """Everything EMOCA reads from a FLAME asset folder.

    Attributes:
        flame: the FLAME layer.
        texture: the albedo model, or None when the folder has no texture space (the
            released EMOCA checkpoints use a constant albedo of 0.5 then).
        template: the UV template (``uvs`` (T, 2), ``face_uvs`` (F, 3)).
        uv_face_mask: (H, W) float32 in [0, 1].
        uv_face_eye_mask: (H, W) float32 in [0, 1].
        fixed_displacement: (256, 256) float32 UV displacement added to the detail map.
        folder: where they came from.
    """

    flame: FLAME
    texture: FlameTexture | None
    template: ObjMesh
    uv_face_mask: np.ndarray
    uv_face_eye_mask: np.ndarray
    fixed_displacement: np.ndarray
    folder: Path


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FLAME asset file not found")
    return path


def _read_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(_require(path)), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FlameAssetError(f"{path}: not a readable image")
    return (mask.astype(np.float32) / 255.0)


def load_flame_assets(
    folder: str | os.PathLike,
    n_shape: int = 100,
    n_exp: int = 50,
    n_tex: int = 50,
    dtype: torch.dtype = torch.float32,
) -> FlameAssets:
    """Load a FLAME asset folder (official file names).

    The texture space is optional; every other file is required, and a missing one is an
    error that names it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such FLAME asset folder")
    flame = create(folder, n_shape=n_shape, n_exp=n_exp, dtype=dtype)
    template = load_obj(_require(folder / TEMPLATE_FILE))
    if template.uvs is None or template.face_uvs is None:
        raise FlameAssetError(f"{folder / TEMPLATE_FILE}: the template has no UV coordinates")
    if template.faces.shape != tuple(flame.faces.shape):
        raise FlameAssetError(f"{folder / TEMPLATE_FILE}: {template.faces.shape[0]} faces, the "
                              f"model has {flame.faces.shape[0]}")
    texture = None
    for name in (TEXTURE_FILE, BFM_TEXTURE_FILE):
        if (folder / name).is_file():
            texture = load_flame_texture(folder / name, n_tex=n_tex)
            break
    displacement = np.load(_require(folder / DISPLACEMENT_FILE), allow_pickle=False)
    if displacement.shape != (256, 256):
        raise FlameAssetError(f"{folder / DISPLACEMENT_FILE}: shape {displacement.shape}, "
                              "expected (256, 256)")
    return FlameAssets(
        flame=flame,
        texture=texture,
        template=template,
        uv_face_mask=_read_mask(folder / FACE_MASK_FILE),
        uv_face_eye_mask=_read_mask(folder / FACE_EYE_MASK_FILE),
        fixed_displacement=displacement.astype(np.float32),
        folder=folder,
    )


def make_renderer(assets: FlameAssets, image_size: int | tuple[int, int] = 224,
                  uv_size: int = 256, backend: str = "torch"):
    """A :class:`~emoca_pipeline.render.MeshRenderer` for the assets' template and masks."""
    from emoca_pipeline.render import MeshRenderer

    return MeshRenderer(
        faces=assets.flame.faces, uvs=assets.template.uvs, face_uvs=assets.template.face_uvs,
        image_size=image_size, uv_size=uv_size, uv_face_eye_mask=assets.uv_face_eye_mask,
        uv_face_mask=assets.uv_face_mask, backend=backend,
    )
