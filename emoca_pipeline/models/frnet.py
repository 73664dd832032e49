"""The VGGFace2 ResNet-50 of FRNet (the trunk of the original EmoCnn and of DECA's identity loss).

Same parameter names and shapes as torchvision's ResNet-50, different computation:

* a downsampling Bottleneck puts its stride on the first 1x1 convolution (``conv1``), not on
  the 3x3 (``conv2``);
* the stem's max-pool is ``MaxPool2d(3, stride=2, padding=0, ceil_mode=True)`` (torchvision:
  padding 1, floor).

So weights converted from the original (``resnet50_ft_weight.pkl``, an EmoCnn checkpoint) load
key for key into either layout, but only this one reproduces the original's features.
Reference: ``gdl/layers/losses/FRNet.py`` (EMOCA) = ``decalib/models/frnet.py`` (DECA),
itself from cydonia999/VGGFace2-pytorch.

The original ends with ``AvgPool2d(7, stride=1)``; here it is an adaptive average pool, equal
at the 224 px input the original requires, and defined at other sizes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FRNET_FEATURE_DIM", "FRNetBottleneck", "FRNetResNet50"]

#: Width of the pooled feature (the 2048-d ``emo_feat_2`` of EmoCnn).
FRNET_FEATURE_DIM = 2048
_BLOCKS = (3, 4, 6, 3)
_WIDTHS = (64, 128, 256, 512)


class FRNetBottleneck(nn.Module):
    """1x1 (stride) -> 3x3 -> 1x1 (x4 channels) with a residual; BatchNorm after each conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, 4 planes, H / stride, W / stride)."""
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class FRNetResNet50(nn.Module):
    """FRNet's ResNet-50 without the classifier: images -> pooled 2048-d features.

    State-dict keys are the original's (``conv1.weight``, ``bn1.running_mean``,
    ``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``, ...); its ``fc`` (8631
    VGGFace2 identities) is not part of this module.
    """

    feature_dim = FRNET_FEATURE_DIM

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip(_WIDTHS, _BLOCKS, strict=True)):
            stride = 1 if index == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
            layers = [FRNetBottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * 4
            layers += [FRNetBottleneck(inplanes, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # The original's initialisation (He normal on fan-out, BatchNorm 1 / 0).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, 2048) pooled features (the original's ``include_top=False``
        output, flattened)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)
