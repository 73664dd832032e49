"""DECA's detail decoder (``Generator``): codes -> a 256x256 UV displacement map.

Layout and names are the original's (``l1`` and ``conv_blocks`` with the same Sequential
indices), so the released ``deca.D_detail.*`` keys load unchanged. Two quirks are kept on
purpose for checkpoint compatibility: ``BatchNorm2d(C, 0.8)`` passes 0.8 as *eps* (the
author meant momentum), and the first BatchNorm follows the reshape of ``l1``'s output.
Upsampling is bilinear with ``align_corners=False`` (``nn.Upsample``'s default).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DetailGenerator"]


class DetailGenerator(nn.Module):
    """cat[jaw 3, exp 50, detail 128] -> tanh displacement x ``out_scale``.

    Args:
        latent_dim: input width (181 = 3 + n_exp + n_detail).
        out_channels: 1 (a displacement along the normal).
        out_scale: 0.01 in DECA/EMOCA.
        sample_mode: upsampling mode, "bilinear" in DECA/EMOCA.

    Shapes: ``(N, latent_dim)`` -> Linear to ``(N, 128, 8, 8)`` -> BatchNorm2d(128) -> 5 x
    [Upsample x2, Conv3x3, BatchNorm2d(C, eps=0.8), LeakyReLU 0.2] with C = 128, 64, 64, 32,
    16 -> Conv3x3 16 -> out_channels -> tanh -> ``(N, out_channels, 256, 256)``.
    """

    init_size = 8

    def __init__(self, latent_dim: int = 181, out_channels: int = 1, out_scale: float = 0.01,
                 sample_mode: str = "bilinear") -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim: must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim
        self.out_scale = out_scale
        self.l1 = nn.Sequential(nn.Linear(latent_dim, 128 * self.init_size ** 2))
        blocks: list[nn.Module] = [nn.BatchNorm2d(128)]
        channels = (128, 128, 64, 64, 32, 16)
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            blocks += [
                nn.Upsample(scale_factor=2, mode=sample_mode),
                nn.Conv2d(c_in, c_out, 3, stride=1, padding=1),
                nn.BatchNorm2d(c_out, 0.8),  # eps=0.8: the original's quirk, kept
                nn.LeakyReLU(0.2, inplace=True),
            ]
        blocks += [nn.Conv2d(16, out_channels, 3, stride=1, padding=1), nn.Tanh()]
        self.conv_blocks = nn.Sequential(*blocks)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """``(N, latent_dim)`` -> ``(N, out_channels, 256, 256)``."""
        if latent.ndim != 2 or latent.shape[1] != self.latent_dim:
            raise ValueError(f"latent: expected shape (N, {self.latent_dim}), "
                             f"got {tuple(latent.shape)}")
        out = self.l1(latent).view(latent.shape[0], 128, self.init_size, self.init_size)
        return self.conv_blocks(out) * self.out_scale
