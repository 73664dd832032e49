"""EMOCA v2's lip-reading loss: cosine distance of a lip-reading network's mouth features.

The original (``gdl/models/temporal/external/LipReadingLoss.py`` and
``DECA._cut_mouth_vectorized`` / ``_compute_lipread_loss`` in ``gdl/models/DECA.py``) uses the
visual front-end of the LRS3 lip-reading model of "Visual Speech Recognition for Multiple
Languages" (mpc001/Visual_Speech_Recognition_for_Multiple_Languages, via SPECTRE):
``encoder(x, None, extract_resnet_feats=True)`` returns right after the front-end, so only
that part is needed, and it is ported here (:class:`LipReadingFrontend`: ``Conv3dResNet``,
a 3D conv stem and a ResNet-18 trunk, 512-d per frame) with the original's parameter names,
so the ``encoder.frontend.*`` entries of the released ``model.pth`` load key for key.

Per image (a sequence of one frame, as EMOCA uses it):

1. mouth crop (:func:`cut_mouth`): centre = mean of the 68-point landmarks 48..67 (no
   grad), a 96 x 96 grid of +-48 px around it, grayscale (ITU-R 601-2 luma), bicubic
   ``grid_sample`` with ``align_corners=True`` and zero padding;
2. centre crop 88 x 88, ``(x - 0.421) / 0.165``;
3. front-end features (N, 512); loss = ``1 - mean(cos(f(input), f(render)))``, the input
   branch without grad.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LIPREAD_MEAN",
    "LIPREAD_STD",
    "LipReadingFrontend",
    "LipReadingLoss",
    "cut_mouth",
    "load_lipreading_frontend",
]

LIPREAD_MEAN, LIPREAD_STD = 0.421, 0.165
_CROP, _INNER = 96, 88
_MOUTH = slice(48, 68)


class _Swish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


def _activation(kind: str, channels: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(num_parameters=channels)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    return _Swish()


class _BasicBlock(nn.Module):
    """ResNet basic block with the front-end's activations (``relu1``/``relu2``)."""

    def __init__(self, inplanes: int, planes: int, stride: int, relu_type: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = _activation(relu_type, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = _activation(relu_type, planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + residual)


class _Trunk(nn.Module):
    """ResNet-18 layers 1..4 + global average pool (no stem: the 3D front-end is the stem)."""

    def __init__(self, relu_type: str) -> None:
        super().__init__()
        inplanes = 64
        for index, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if index == 0 else 2
            self.add_module(f"layer{index + 1}", nn.Sequential(
                _BasicBlock(inplanes, planes, stride, relu_type),
                _BasicBlock(planes, planes, 1, relu_type)))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class LipReadingFrontend(nn.Module):
    """The lip-reading model's visual front-end (``Conv3dResNet``): (B, T, H, W) -> (B, T, 512).

    Args:
        relu_type: ``"swish"`` (the E2E model's default), ``"prelu"`` or ``"relu"``.
    """

    def __init__(self, relu_type: Literal["swish", "prelu", "relu"] = "swish") -> None:
        super().__init__()
        if relu_type not in ("swish", "prelu", "relu"):
            raise ValueError(f"relu_type: expected swish, prelu or relu, got {relu_type!r}")
        self.relu_type = relu_type
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, 64, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3),
                      bias=False),
            nn.BatchNorm3d(64),
            _activation(relu_type, 64),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.trunk = _Trunk(relu_type)

    def forward(self, frames: Tensor) -> Tensor:
        """frames: (B, T, H, W) normalised grayscale mouth crops -> (B, T', 512)."""
        x = self.frontend3D(frames.unsqueeze(1))  # (B, 64, T', H', W')
        batch, channels, time = x.shape[:3]
        x = x.transpose(1, 2).reshape(batch * time, channels, *x.shape[3:])
        return self.trunk(x).view(batch, time, -1)


def load_lipreading_frontend(path: str | os.PathLike,
                             relu_type: Literal["swish", "prelu", "relu"] | None = None
                             ) -> LipReadingFrontend:
    """The front-end of a lip-reading ``model.pth`` (a state dict, ``torch.load`` with
    ``weights_only=True``); entries outside ``encoder.frontend.`` (the conformer, decoder,
    CTC) are not needed and skipped.

    relu_type: None reads it from the weights (PReLU has parameters) and otherwise takes
    swish, the lip-reading E2E model's default.

    Raises:
        FileNotFoundError: no weights at ``path``, with what the loss needs.
        ValueError: the file holds no front-end, or one that does not fit.
    """
    from emoca_pipeline.models.emotion import load_state_dict_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"lip-reading weights not found at {path}: the lip-reading loss needs the LRS3 "
            "visual speech recognition model (model.pth of LRS3_V_WER32.3, "
            "Visual_Speech_Recognition_for_Multiple_Languages, as used by EMOCA v2/SPECTRE); "
            "set lip_reading: 0 to train without it")
    state = load_state_dict_file(path)
    prefix = next((p for p in ("encoder.frontend.", "frontend.", "") if any(
        k.startswith(p + "frontend3D.") for k in state)), None)
    if prefix is None:
        raise ValueError(f"{path}: no lip-reading front-end in this file (expected "
                         "'encoder.frontend.frontend3D.*' keys)")
    frontend_state: Mapping[str, Tensor] = {k[len(prefix):]: v for k, v in state.items()
                                            if k.startswith(prefix)}
    if relu_type is None:
        relu_type = "prelu" if "frontend3D.2.weight" in frontend_state else "swish"
    model = LipReadingFrontend(relu_type)
    try:
        result = model.load_state_dict(frontend_state, strict=False)
    except RuntimeError as error:
        raise ValueError(f"{path}: lip-reading front-end does not fit: "
                         f"{str(error).strip().splitlines()[-1].strip()}") from error
    if result.missing_keys or result.unexpected_keys:
        key = (result.missing_keys or result.unexpected_keys)[0]
        kind = "missing" if result.missing_keys else "unexpected"
        raise ValueError(f"{path}: lip-reading front-end: {kind} key '{prefix}{key}'")
    return model.eval()


def cut_mouth(images: Tensor, landmarks: Tensor) -> Tensor:
    """The original's mouth crop (``_cut_mouth_vectorized`` with a one-frame window).

    images: (N, 3, H, W) RGB. landmarks: (N, 68, 2+) in the image's [-1, 1] frame.
    Returns (N, 1, 96, 96) grayscale crops centred on the mean of points 48..67.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (N, 3, H, W), got {tuple(images.shape)}")
    if landmarks.ndim != 3 or landmarks.shape[1] != 68 or landmarks.shape[0] != len(images):
        raise ValueError(f"landmarks: expected ({len(images)}, 68, 2), got "
                         f"{tuple(landmarks.shape)}")
    height, width = images.shape[-2:]
    with torch.no_grad():
        centre = landmarks[:, _MOUTH, :2].float().mean(dim=1)  # (N, 2) x, y in [-1, 1]
        rows = torch.linspace(-_CROP // 2, _CROP // 2, _CROP, device=images.device) / (height / 2)
        cols = torch.linspace(-_CROP // 2, _CROP // 2, _CROP, device=images.device) / (width / 2)
        grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
        grid = torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0) + centre[:, None, None, :]
    weights = images.new_tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)
    gray = (images * weights).sum(dim=1, keepdim=True)
    return F.grid_sample(gray, grid.to(images.dtype), mode="bicubic", padding_mode="zeros",
                         align_corners=True)


class LipReadingLoss(nn.Module):
    """``1 - mean cos`` of lip-reading features of the input's and the render's mouths.

    Args:
        frontend: the frozen feature network, e.g. :func:`load_lipreading_frontend`'s
            (any module mapping (B, T, 88, 88) to (B, T, F)).
    """

    def __init__(self, frontend: nn.Module) -> None:
        super().__init__()
        self.frontend = frontend.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LipReadingLoss:
        super().train(False)
        return self

    def mouth_features(self, images: Tensor, landmarks: Tensor) -> Tensor:
        """(N, 3, H, W), (N, 68, 2) -> (N, F) features of the normalised 88 px mouth crop."""
        mouths = cut_mouth(images, landmarks)[:, 0]  # (N, 96, 96)
        start = (_CROP - _INNER) // 2
        mouths = mouths[:, start:start + _INNER, start:start + _INNER]
        mouths = (mouths - LIPREAD_MEAN) / LIPREAD_STD
        features = self.frontend(mouths.unsqueeze(1))  # one-frame sequences: (N, 1, F)
        return features.reshape(len(images), -1)

    def forward(self, images: Tensor, predicted_images: Tensor, landmarks: Tensor,
                predicted_landmarks: Tensor) -> Tensor:
        """images, predicted_images: (N, 3, H, W) in [0, 1]; landmarks (detected, for the
        input) and predicted_landmarks (projected, for the render): (N, 68, 2) in [-1, 1]."""
        with torch.no_grad():
            target = self.mouth_features(images, landmarks)
        generated = self.mouth_features(predicted_images, predicted_landmarks)
        return 1.0 - F.cosine_similarity(target, generated, dim=1).mean()
