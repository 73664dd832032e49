"""DECA/EMOCA image encoders: a ResNet-50 trunk and a two-layer regression head.

The module and parameter names are the original's (``encoder.*`` for the trunk, ``layers.0``
and ``layers.2`` for the head), so a released checkpoint's ``deca.E_flame.*`` keys load after
the prefix is stripped. The original trunk is torchvision's ResNet-50 without ``fc`` and with
a fixed 7x7 average pool, which equals torchvision's adaptive pool at the 224 px input size.

``backbone="resnet18"`` is a lighter trunk for CPU demos (512-d pooled, the same head layout;
about a fifth of ResNet-50's training-step time at 64 px, see benchmarks/bench_train.py).
It is not EMOCA's: released checkpoints and real-data configs use ResNet-50.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

from emoca_pipeline.models.emotion import load_state_dict_file

__all__ = ["ENCODER_BACKBONES", "ResnetEncoder", "split_flame_code"]

#: Widths of E_flame's output, in the original's order.
FLAME_CODE_ORDER: tuple[str, ...] = ("shape", "tex", "exp", "pose", "cam", "light")
#: Trunks a ResnetEncoder can have, with their pooled feature widths (resnet50: EMOCA's).
ENCODER_BACKBONES: dict[str, int] = {"resnet50": 2048, "resnet18": 512}


class ResnetEncoder(nn.Module):
    """ResNet-50 (2048-d pooled) -> Linear 1024 -> ReLU -> Linear ``out_features``.

    Args:
        out_features: width of the output code (E_flame 236, E_expression 50, E_detail 128).
        backbone: "resnet50" (EMOCA) or "resnet18" (a lighter CPU-demo option, 512-d pooled
            features; the same head layout).
        weights_path: optional local file with initial weights (read with
            ``torch.load(weights_only=True)``, never downloaded): a torchvision ResNet-50
            state dict (ImageNet; its ``fc.*`` is ignored) or a ResnetEncoder state dict
            (``encoder.*`` and ``layers.*``, e.g. DECA's E_flame).

    Input images are ``(N, 3, H, W)`` RGB in [0, 1] (no mean/std normalisation, as in EMOCA).
    """

    def __init__(self, out_features: int, weights_path: str | os.PathLike | None = None,
                 backbone: str = "resnet50") -> None:
        super().__init__()
        if out_features < 1:
            raise ValueError(f"out_features: must be >= 1, got {out_features}")
        if backbone not in ENCODER_BACKBONES:
            raise ValueError(f"backbone: expected one of {', '.join(ENCODER_BACKBONES)}, "
                             f"got {backbone!r}")
        self.out_features = out_features
        self.backbone = backbone
        self.feature_dim = ENCODER_BACKBONES[backbone]
        trunk = getattr(torchvision.models, backbone)(weights=None)
        trunk.fc = nn.Identity()
        self.encoder = trunk
        self.layers = nn.Sequential(
            nn.Linear(self.feature_dim, 1024), nn.ReLU(), nn.Linear(1024, out_features)
        )
        if weights_path is not None:
            self.load_initial_weights(weights_path)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` -> pooled trunk features ``(N, feature_dim)`` (2048 or 512)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected shape (N, 3, H, W), got {tuple(images.shape)}")
        return self.encoder(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` -> ``(N, out_features)``."""
        return self.layers(self.features(images))

    def load_initial_weights(self, path: str | os.PathLike) -> None:
        """Load a torchvision ResNet-50 or a ResnetEncoder state dict from a local file.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a weights-only state dict, or one that does not fit.
        """
        state = load_state_dict_file(path)
        self.load_encoder_state(state, source=str(Path(path)))

    def load_encoder_state(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load ``state`` (torchvision ResNet-50 keys, or ``encoder.*``/``layers.*``); a head
        of another width is skipped (the trunk is what gets reused), anything else that does
        not fit is an error naming ``source``."""
        if any(key.startswith("encoder.") for key in state):
            trunk = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
            head = {k[len("layers."):]: v for k, v in state.items() if k.startswith("layers.")}
        else:
            trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
            head = {}
        try:
            result = self.encoder.load_state_dict(trunk, strict=False)
        except RuntimeError as error:
            raise ValueError(f"{source}: weights do not fit a {self.backbone} trunk: "
                             f"{str(error).strip().splitlines()[-1].strip()}") from error
        if result.missing_keys or result.unexpected_keys:
            missing, unexpected = result.missing_keys, result.unexpected_keys
            example = (missing or unexpected)[0]
            raise ValueError(f"{source}: not a {self.backbone} state dict ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected keys, e.g. {example})")
        own = self.layers.state_dict()
        if head and all(k in own and own[k].shape == v.shape for k, v in head.items()):
            self.layers.load_state_dict(head)


def split_flame_code(
    code: torch.Tensor, widths: Mapping[str, int]
) -> dict[str, torch.Tensor]:
    """Split E_flame's output in the original's order (shape, tex, exp, pose, cam, light).

    Args:
        code: ``(N, sum(widths))``.
        widths: width of each part by name (the keys of :data:`FLAME_CODE_ORDER`).

    Returns:
        ``{name: (N, width)}``; ``light`` is reshaped to ``(N, 9, 3)`` (9 SH bands x RGB).
    """
    total = sum(widths[name] for name in FLAME_CODE_ORDER)
    if code.ndim != 2 or code.shape[1] != total:
        raise ValueError(f"code: expected shape (N, {total}), got {tuple(code.shape)}")
    parts, start = {}, 0
    for name in FLAME_CODE_ORDER:
        parts[name] = code[:, start:start + widths[name]]
        start += widths[name]
    parts["light"] = parts["light"].reshape(code.shape[0], -1, 3)
    return parts
