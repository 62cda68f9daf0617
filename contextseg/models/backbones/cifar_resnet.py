"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition", Sec. 4.2): depth 6n + 2.

    stem    3x3 conv-BN-ReLU, 16 ch                      (B, 16, H, W)
    stage1  n basic blocks, 16 ch                        -> c1 (B, 16, H,   W)
    stage2  n basic blocks, 32 ch, first one stride 2    -> c2 (B, 32, H/2, W/2)
    stage3  n basic blocks, 64 ch, first one stride 2    -> c3 (B, 64, H/4, W/4)

A basic block is conv3x3-BN-ReLU, conv3x3-BN, + shortcut, ReLU. Shortcuts are the paper's option A for CIFAR
(identity; where the width doubles, the input subsampled by 2 and zero-padded in channels: no parameters). The
classifier (GAP + FC) belongs to the head (``create_model("gap", backbone="cifar_resnet20")``); with it, ResNet-20
has 269,722 parameters and ResNet-56 853,018 for 10 classes, the paper's 0.27M and 0.85M (Table 6).
Strided convs map n -> ceil(n / 2), so any input size works; 32x32 gives maps of 32, 16 and 8.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import BACKBONES
from .init import he_init

CIFAR_DEPTHS = (20, 32, 44, 56, 110)


class BasicBlock(nn.Module):
    """(B, C_in, H, W) -> (B, planes, ceil(H / stride), ceil(W / stride)), option-A shortcut."""

    fuse_pairs = (("conv1", "bn1"), ("conv2", "bn2"))  # for fuse_conv_bn

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.extra = stride, planes - inplanes

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """(B, in_channels, H, W) -> [c1, c2, c3]; out_channels [16, 32, 64], strides [1, 2, 4]."""

    out_channels = [16, 32, 64]
    strides = [1, 2, 4]
    default_in_index = -1

    def __init__(self, depth: int = 20, in_channels: int = 3):
        super().__init__()
        if depth not in CIFAR_DEPTHS and not (isinstance(depth, int) and depth >= 8 and (depth - 2) % 6 == 0):
            raise ContextSegError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), got {depth!r}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ContextSegError(f"in_channels must be a positive integer (3 for RGB), got {in_channels!r}")
        self.depth, self.in_channels = depth, in_channels
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, c = [], 16
        for width, stride in zip(self.out_channels, (1, 2, 2)):
            stages.append(nn.Sequential(*[BasicBlock(c if i == 0 else width, width, stride if i == 0 else 1)
                                          for i in range(n)]))
            c = width
        self.layer1, self.layer2, self.layer3 = stages
        he_init(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ContextSegError(f"CIFAR ResNet-{self.depth} expects a (B, {self.in_channels}, H, W) batch, got "
                                  f"shape {tuple(x.shape)}")
        x = F.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        return [c1, c2, self.layer3(c2)]


def _register(depth: int) -> None:
    def build(in_channels: int = 3) -> CifarResNet:
        return CifarResNet(depth, in_channels)

    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016, Sec. 4.2): three stages 16/32/64 ch, strides 1/2/4."
    BACKBONES.register(f"cifar_resnet{depth}")(build)


for _depth in CIFAR_DEPTHS:
    _register(_depth)
