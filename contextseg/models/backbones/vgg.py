"""VGG-16 feature extractor (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", Table 1, configuration D), the backbone of the Pyramid Feature Attention network for saliency
(Zhao & Wu 2019), which reads conv1_2, conv2_2, conv3_3, conv4_3 and conv5_3 (after their ReLUs).

    block1  2 x conv3x3-ReLU 64         -> conv1_2 (B, 64,  H,      W)
    block2  pool, 2 x conv3x3-ReLU 128  -> conv2_2 (B, 128, H/2,    W/2)
    block3  pool, 3 x conv3x3-ReLU 256  -> conv3_3 (B, 256, H/4,    W/4)
    block4  pool, 3 x conv3x3-ReLU 512  -> conv4_3 (B, 512, H/8,    W/8)
    block5  pool, 3 x conv3x3-ReLU 512  -> conv5_3 (B, 512, H/16,   W/16)

Pools are 2x2 stride 2 with ceil_mode=True, so any input size works: each map is ceil(previous / 2) (the Keras
original floors, which loses the last row and column of odd sizes). No pool5, no classifier. The conv layers sit in
``features`` at torchvision's indices (``features.0`` ... ``features.28``), so a torchvision ``vgg16-*.pth``
state_dict loads from a local file (``load_official`` / ``model.pretrained``; its ``classifier.*`` is dropped).
14,714,688 parameters, as torchvision's ``vgg16().features``.

``vgg16_bn`` is the same network with BatchNorm after every conv (torchvision's ``vgg16_bn().features`` layout,
``features.0`` ... ``features.42``, 14,723,136 parameters): VGG without BN barely trains from scratch in a short
schedule, so the from-scratch recipes use it.

``width_mult`` scales every layer's width (``round(width * width_mult)``, as MobileNet's width multiplier): 0.5
keeps the depth, strides and taps with a quarter of the parameters (3,684,384 for ``vgg16_bn``), for models that
must stay small (the zoo's saliency model). Not the paper's network; 1.0 (default) is.
"""
from __future__ import annotations

from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import BACKBONES

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPS = (3, 8, 15, 22, 29)  # indices of the ReLUs after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3
TAPS_BN = (5, 12, 22, 32, 42)  # the same ReLUs in the vgg16_bn layout (conv, BN, ReLU)


class VGG16(nn.Module):
    """(B, in_channels, H, W) -> [conv1_2, conv2_2, conv3_3, conv4_3, conv5_3], strides 1, 2, 4, 8, 16.

    Attributes: out_channels [64, 128, 256, 512, 512] (times ``width_mult``); strides [1, 2, 4, 8, 16];
    default_in_index [2, 3, 4].
    """

    strides = [1, 2, 4, 8, 16]
    default_in_index = [2, 3, 4]

    def __init__(self, in_channels: int = 3, batch_norm: bool = False, width_mult: float = 1.0):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ContextSegError(f"in_channels must be a positive integer (3 for RGB), got {in_channels!r}")
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not 0 < width_mult <= 4:
            raise ContextSegError(f"width_mult scales the layer widths (e.g. 0.5), a number in (0, 4]; got "
                                  f"{width_mult!r}")
        self.in_channels = in_channels
        self.out_channels = [max(1, round(v * width_mult)) for v in (64, 128, 256, 512, 512)]
        layers: list[nn.Module] = []
        c = in_channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                v = max(1, round(v * width_mult))
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1)]
                layers += [nn.BatchNorm2d(v)] if batch_norm else []
                layers += [nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.taps = TAPS_BN if batch_norm else TAPS
        for m in self.modules():  # torchvision's VGG init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ContextSegError(f"VGG16 expects a (B, {self.in_channels}, H, W) batch, got shape {tuple(x.shape)}")
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                taps.append(x)
        return taps


@BACKBONES.register("vgg16")
def build_vgg16(in_channels: int = 3, width_mult: float = 1.0) -> VGG16:
    """VGG-16 conv1_1 ... conv5_3 (no pool5, no classifier), five taps at strides 1 to 16."""
    return VGG16(in_channels=in_channels, width_mult=width_mult)


@BACKBONES.register("vgg16_bn")
def build_vgg16_bn(in_channels: int = 3, width_mult: float = 1.0) -> VGG16:
    """VGG-16 with BatchNorm after every conv (torchvision's vgg16_bn layout), five taps at strides 1 to 16."""
    return VGG16(in_channels=in_channels, batch_norm=True, width_mult=width_mult)
