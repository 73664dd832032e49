"""FLAME's linear albedo model, read from ``FLAME_texture.npz`` or ``FLAME_albedo_from_BFM.npz``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emoca_pipeline.flame.io import FlameAssetError

__all__ = ["FlameTexture", "load_flame_texture"]

# (mean key, basis key, scale) of the two released texture spaces.
_LAYOUTS = {
    "FLAME": ("mean", "tex_dir", 1.0 / 255.0),
    "BFM": ("MU", "PC", 1.0),
}
RELEASED_SIZE = 512  # the released maps are 512x512; a (H, W, 3) mean may say otherwise


class FlameTexture(nn.Module):
    """Albedo maps from texture codes, as DECA's FLAMETex.

    Args:
        mean: (1, S*S*3) mean albedo in [0, 1], stored BGR-interleaved as released.
        basis: (1, S*S*3, n_tex) components.
        map_size: S, the side of the stored maps (512 in the released files).
        uv_size: side of the returned maps (DECA: 256).
    """

    def __init__(
        self, mean: np.ndarray, basis: np.ndarray, map_size: int = RELEASED_SIZE,
        uv_size: int = 256,
    ) -> None:
        super().__init__()
        self.map_size = map_size
        self.uv_size = uv_size
        self.n_tex = basis.shape[-1]
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        # Stored (n_tex, P): one matmul per batch instead of DECA's (N, P, n_tex) product.
        self.register_buffer("basis", torch.as_tensor(basis[0].T, dtype=torch.float32).contiguous())

    def forward(self, texcode: torch.Tensor) -> torch.Tensor:
        """Texture codes (N, n_tex) to albedo maps (N, 3, uv_size, uv_size), RGB in [0, 1]."""
        if texcode.dim() != 2 or texcode.shape[1] != self.n_tex:
            raise ValueError(f"texcode: expected shape (N, {self.n_tex}), got "
                             f"{tuple(texcode.shape)}")
        texture = self.mean + texcode.to(self.basis.dtype) @ self.basis
        texture = texture.reshape(-1, self.map_size, self.map_size, 3).permute(0, 3, 1, 2)
        texture = F.interpolate(texture, [self.uv_size, self.uv_size])
        return texture[:, [2, 1, 0]]


def load_flame_texture(
    path: str | os.PathLike, n_tex: int = 50, uv_size: int = 256
) -> FlameTexture:
    """Read a texture space; the layout (FLAME or BFM) is recognised by its keys.

    The basis holds its components on the last axis: (S, S, 3, K) or (S*S*3, K).

    Raises:
        FileNotFoundError: no such file.
        FlameAssetError: unknown keys, wrong sizes, or ``n_tex`` beyond the file's components.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FLAME texture file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            layout = next((name for name, (m, b, _) in _LAYOUTS.items()
                           if {m, b} <= keys), None)
            if layout is None:
                raise FlameAssetError(f"{path}: expected keys mean/tex_dir (FLAME) or MU/PC "
                                      f"(BFM), found {sorted(keys)}")
            mean_key, basis_key, scale = _LAYOUTS[layout]
            mean_array = npz[mean_key]
            basis = npz[basis_key]
    except ValueError as err:
        if isinstance(err, FlameAssetError):
            raise
        raise FlameAssetError(f"{path}: not a readable texture file: {err}") from err
    map_size = mean_array.shape[0] if mean_array.ndim == 3 else RELEASED_SIZE
    mean = mean_array.reshape(1, -1).astype(np.float32) * scale
    components = basis.shape[-1]
    basis = basis.reshape(-1, components)
    if mean.shape[1] != map_size * map_size * 3 or basis.shape[0] != mean.shape[1]:
        raise FlameAssetError(f"{path}: expected {map_size}x{map_size}x3 maps, got "
                              f"mean of {mean.shape[1]} values and basis {basis.shape}")
    if not 0 < n_tex <= components:
        raise ValueError(f"n_tex: must be in 1..{components} for {path.name}, got {n_tex}")
    basis = basis[:, :n_tex].astype(np.float32) * scale
    return FlameTexture(mean, basis[None], map_size=map_size, uv_size=uv_size)
