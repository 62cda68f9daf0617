"""Dilated ResNet-50/101 backbone (He et al. 2016, "Deep Residual Learning for Image Recognition", Table 1) with
the strides of the last stages replaced by dilation (atrous convolution), as DeepLab (Chen et al. 2017, "DeepLab",
Sec. 3.1; "Rethinking Atrous Convolution", Sec. 3.2 and Fig. 3) and PSPNet (Zhao et al. 2017, Sec. 3.3) run it.

    stem      7x7 stride-2 conv-BN-ReLU, 64 ch (or ``deep_stem``: three 3x3 conv-BN-ReLU 32, 32, 64, the first
              strided, as mmsegmentation's ResNetV1c; PSPNet's own, hszhao/semseg, is 64, 64, 128), then 3x3
              stride-2 max pool
    layer1    Bottlenecks, 256 ch   -> c2 (B, 256,  H/4,  W/4)
    layer2    Bottlenecks, 512 ch   -> c3 (B, 512,  H/8,  W/8)
    layer3    Bottlenecks, 1024 ch  -> c4 (B, 1024, H/8,  W/8)   OS 8   | H/16 OS 16 and 32
    layer4    Bottlenecks, 2048 ch  -> c5 (B, 2048, H/8,  W/8)   OS 8   | H/16 OS 16 | H/32 OS 32

Blocks per layer: (3, 4, 6, 3) for ResNet-50, (3, 4, 23, 3) for ResNet-101. The stride sits in the 3x3 conv of a
block (torchvision's "ResNet v1.5"). A dilated layer keeps stride 1 and multiplies the dilation by 2; its first
block still uses the previous dilation and the other blocks the new one (torchvision's
``replace_stride_with_dilation``; mmsegmentation's ``contract_dilation=True``): OS 8 gives layer3 dilations
1, 2, 2, ... and layer4 2, 4, 4; OS 16 gives layer4 1, 2, 2.

Exact sizes for an (H, W) input: every stride-2 op maps n -> ceil(n / 2), so c2 is ceil(H/4) and each later
stride-2 stage halves with ceil again (65 -> 33 -> 17 -> 9 -> 5).

Module and parameter names are torchvision's (``conv1``, ``bn1``, ``layer3.5.conv2.weight``,
``layer1.0.downsample.0.weight``; with ``deep_stem`` mmsegmentation's ``stem.0`` ... ``stem.7``), so an ImageNet
state_dict from a local file loads with ``load_pretrained`` (no download here).
"""
from __future__ import annotations

import os
from typing import Sequence

from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import BACKBONES
from .init import he_init

RESNET_LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    """Bottleneck unit (1x1 reduce, 3x3 with the stride and dilation, 1x1 expand x4), torchvision names:
    (B, C_in, H, W) -> (B, 4 * planes, ceil(H / stride), ceil(W / stride)).
    """

    expansion = 4
    fuse_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))  # for fuse_conv_bn

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


def _conv_bn_relu(in_c: int, out_c: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(in_c, out_c, 3, stride, 1, bias=False), nn.BatchNorm2d(out_c), nn.ReLU(inplace=True)]


class ResNet(nn.Module):
    """Dilated ResNet: (B, in_channels, H, W) -> [c2, c3, c4, c5] with widths [256, 512, 1024, 2048].

    Args:
        layers: Bottleneck blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        in_channels: channels of the input image.
        output_stride: 8, 16 or 32, the stride of c5 (8: layer3 and layer4 dilated; 16: layer4; 32: none).
        deep_stem: three 3x3 convs instead of the 7x7 stem.

    Attributes:
        out_channels: [256, 512, 1024, 2048].
        strides: [4, 8, 8, 8] at OS 8, [4, 8, 16, 16] at OS 16, [4, 8, 16, 32] at OS 32.
        dilations: the 3x3 dilation of the last block of each stage, e.g. [1, 1, 2, 4] at OS 8.
        default_in_index: -1; heads use c5 unless told otherwise.
        aux_in_index: 2; the auxiliary FCN head (``create_model(..., aux=True)``, PSPNet's deep supervision) uses c4.
    """

    default_in_index = -1
    aux_in_index = 2
    fuse_pairs = (("conv1", "bn1"),)  # the 7x7 stem (None with deep_stem; the deep stem is a Sequential)

    def __init__(
        self, layers: Sequence[int], in_channels: int = 3, output_stride: int = 8, deep_stem: bool = False
    ):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ContextSegError(f"in_channels must be a positive integer (3 for RGB), got {in_channels!r}")
        if output_stride not in (8, 16, 32) or isinstance(output_stride, bool):
            raise ContextSegError(
                f"ResNet output_stride must be 8, 16 or 32, got {output_stride!r}; "
                f"use 8 as PSPNet / DeepLab v2 did, or 16 as DeepLab v3 trained"
            )
        if not isinstance(deep_stem, bool):
            raise ContextSegError(f"deep_stem must be True or False, got {deep_stem!r}")
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.deep_stem = deep_stem
        if deep_stem:
            self.stem = nn.Sequential(
                *_conv_bn_relu(in_channels, 32, 2), *_conv_bn_relu(32, 32, 1), *_conv_bn_relu(32, 64, 1)
            )
            self.conv1 = self.bn1 = None
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        dilate = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}[output_stride]
        self._inplanes, self._dilation = 64, 1
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(256, layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(512, layers[3], stride=2, dilate=dilate[2])
        self.out_channels = [256, 512, 1024, 2048]
        self.strides = [4]
        for dilated in dilate:  # layer2..layer4 halve the size unless dilated
            self.strides.append(self.strides[-1] * (1 if dilated else 2))
        self.dilations = [layer[-1].conv2.dilation[0] for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]
        self.reset_parameters()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        layers = [Bottleneck(self._inplanes, planes, stride, previous, downsample)]
        self._inplanes = out
        layers += [Bottleneck(out, planes, dilation=self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        """He-normal (fan_out) conv weights, BN weight 1 and bias 0 (torchvision's init)."""
        he_init(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ContextSegError(
                f"ResNet expects a (B, {self.in_channels}, H, W) batch, got shape {tuple(x.shape)}; "
                f"build the model with in_channels={x.shape[1] if x.dim() == 4 else '<C>'} or fix the input"
            )
        x = self.stem(x) if self.deep_stem else self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c2, c3, c4, self.layer4(c4)]

    def load_pretrained(self, path: str | os.PathLike) -> None:
        """Load ImageNet weights from a local file (no download): a torchvision ``resnet50-*.pth`` state_dict, or an
        mmcv/mmsegmentation checkpoint (``{"state_dict": ...}``, optional ``backbone.`` / ``module.`` prefixes;
        ``resnet50_v1c`` for ``deep_stem=True``). The classifier ``fc.*`` is dropped; every other tensor must match.
        """
        from ..official import load_fitting, read_state_dict

        state = read_state_dict(path)  # containers, module. / backbone. prefixes and the classifier fc.* handled
        load_fitting(self, state, "this ResNet", path,
                     f"build the backbone like the file's network (depth, deep_stem={not self.deep_stem} if the stem "
                     f"keys differ, in_channels=3 for ImageNet weights)")


def _register(name: str) -> None:
    def build(in_channels: int = 3, output_stride: int = 8, deep_stem: bool = False) -> ResNet:
        return ResNet(RESNET_LAYERS[name], in_channels=in_channels, output_stride=output_stride, deep_stem=deep_stem)

    build.__name__ = name
    build.__doc__ = f"Dilated {name} (output_stride 8, 16 or 32; optional deep stem); returns a ResNet module."
    BACKBONES.register(name)(build)


for _name in RESNET_LAYERS:
    _register(_name)
