"""DECA's identity loss: cosine distance of VGGFace2 face-recognition features.

Ported from ``VGGFace2Loss`` (DECA ``decalib/utils/lossfunc.py``; EMOCA
``gdl/layers/losses/DecaLosses.py``, metric ``cosine_similarity``), on the FRNet ResNet-50
(:class:`~emoca_pipeline.models.frnet.FRNetResNet50`) with ``resnet50_ft_weight.pkl`` from a
local path. Preprocessing, exactly as the original (quirks included):

1. RGB [0, 1] -> BGR x 255 minus the VGGFace2 mean (91.4953, 103.8827, 131.0912);
2. crop a 10 px margin of the 224 px image (rows and columns 10..213);
3. ``x * 2 - 1`` (left over from another network's [-1, 1] input; kept, the released DECA
   was trained with it) and bilinear resize back to 224 (``align_corners=False``);
4. the 2048-d pooled features; loss = mean over images of ``1 - cos(gen, target)``.

The network is frozen and in eval mode; the target (input image) branch runs without grad.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoca_pipeline.models.converters import load_frnet_weights
from emoca_pipeline.models.frnet import FRNetResNet50

__all__ = ["VGGFACE2_MEAN_BGR", "VGGFace2IdentityLoss", "vggface2_preprocess"]

#: Mean BGR pixel (0..255) of VGGFace2, subtracted before the network.
VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)
_MARGIN = 10
_SIZE = 224


def vggface2_preprocess(images: Tensor) -> Tensor:
    """(N, 3, 224, 224) RGB in [0, 1] -> (N, 3, 224, 224) the FRNet input of the original."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (_SIZE, _SIZE):
        raise ValueError(f"identity loss images: expected (N, 3, {_SIZE}, {_SIZE}), got "
                         f"{tuple(images.shape)}")
    mean = images.new_tensor(VGGFACE2_MEAN_BGR).view(1, 3, 1, 1)
    bgr = images[:, [2, 1, 0]] * 255 - mean
    cropped = bgr[:, :, _MARGIN:_SIZE - _MARGIN, _MARGIN:_SIZE - _MARGIN]
    return F.interpolate(cropped * 2.0 - 1.0, [_SIZE, _SIZE], mode="bilinear",
                         align_corners=False)


class VGGFace2IdentityLoss(nn.Module):
    """``mean(1 - cos(f(gen), f(target)))`` with f the frozen VGGFace2 ResNet-50.

    Args:
        weights_path: local ``resnet50_ft_weight.pkl`` (or a torch file with FRNet weights,
            see :func:`~emoca_pipeline.models.converters.load_frnet_weights`).

    Raises:
        FileNotFoundError: no such file (the message says what the file is).
    """

    def __init__(self, weights_path: str | os.PathLike) -> None:
        super().__init__()
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(f"VGGFace2 weights not found at {weights_path}: the "
                                    "identity loss needs resnet50_ft_weight.pkl (VGGFace2 "
                                    "ResNet-50, face-recognition weights)")
        self.network = FRNetResNet50()
        self.network.load_state_dict(load_frnet_weights(weights_path))
        self.network.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> VGGFace2IdentityLoss:
        super().train(False)  # a fixed loss network: BatchNorm statistics never change
        return self

    def features(self, images: Tensor) -> Tensor:
        """(N, 3, 224, 224) RGB in [0, 1] -> (N, 2048)."""
        return self.network(vggface2_preprocess(images))

    def forward(self, generated: Tensor, target: Tensor) -> Tensor:
        """generated, target: (N, 3, 224, 224) RGB in [0, 1] -> scalar."""
        with torch.no_grad():  # the target is the input image: nothing to train there
            target_features = self.features(target)
        return (1.0 - F.cosine_similarity(self.features(generated), target_features,
                                          dim=1)).mean()
