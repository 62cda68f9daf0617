"""HRNetV2 segmentation head (Wang et al. 2019, "Deep High-Resolution Representation Learning for Visual
Recognition", Sec. 3 "HRNetV2" and Fig. 4(b)): upsample the four branch outputs to the highest resolution,
concatenate, mix with a 1x1 conv-BN-ReLU and classify every pixel with a 1x1 conv.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ...registry import HEADS
from .common import DecodeHead


@HEADS.register("fcn")
class HRNetV2Head(DecodeHead):
    """HRNetV2 "concat" head: [(B, C_i, H_i, W_i)] -> {"out": (B, K, H_0, W_0)}.

    H_0, W_0 is the size of the first (highest-resolution) map: ceil(H/4), ceil(W/4) for an (H, W) image on HRNet.

        z   = concat_i resize(x_i, (H_0, W_0))           (B, sum C_i, H_0, W_0), bilinear (the model's align_corners)
        h   = ReLU(BN(conv1x1(z) + b))                    (B, sum C_i, H_0, W_0)
        out = conv1x1(h) + b                              (B, K, H_0, W_0)

    Layer names follow the official ``last_layer`` (conv with bias, BN, ReLU, classifier with bias).
    ``in_index`` picks other maps (``FeatureAdapter``): ``in_index=0`` is HRNetV1's head (the highest-resolution
    branch alone, Wang et al. 2019, Fig. 4(a)). "fcn" in ``HEADS``: on the backbone's default map(s).
    """

    feat_module = "last_layer.3"  # its input is the penultimate representation (Segmentor(..., return_feat=True))

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index: int | Sequence[int] | None = None):
        super().__init__(in_channels, num_classes, in_index)  # None: all maps (HRNetV2)
        c = self.inputs.out_channels
        self.last_layer = nn.Sequential(
            nn.Conv2d(c, c, kernel_size=1),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, num_classes, kernel_size=1),
        )

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        return {"out": self.last_layer(self.inputs(feats))}
