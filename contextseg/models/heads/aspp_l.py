"""DeepLab v2 ASPP-L head (Chen, Papandreou, Kokkinos, Murphy & Yuille 2018, "DeepLab: Semantic Image Segmentation
with Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", Sec. 3.1, Fig. 4(b), Sec. 4.1
"ASPP-L" with rates {6, 12, 18, 24}): four parallel 3x3 atrous convolutions, each a classifier (K outputs), whose
score maps are summed. This is the ResNet-101 form of the released model (``fc1_voc12_c0`` ... ``_c3``); the VGG
form stacks fc6/fc7 in each branch.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import HEADS
from .common import AtrousConv2d, DecodeHead, init_classifier

BASE_RATES = (6, 12, 18, 24)  # at output stride 8, as DeepLab v2 ran ResNet-101


@HEADS.register("aspp_l")
class ASPPLHead(DecodeHead):
    """[(B, C_i, H_i, W_i)] -> {"out": (B, K, H, W)}, H, W the size of the chosen map.

        x    = adapter(feats)                                          (B, C, H, W)
        out  = sum_r conv3x3_dilation_r(x) + b_r   for r in rates      (B, K, H, W)

    Parameters: len(rates) * (9*C*K + K). Classifiers start from N(0, 0.01), as DeepLab's. "aspp_l" in ``HEADS``:
    ``rates`` left None are 6/12/18/24 at stride 8 rescaled to the chosen map's stride.
    """

    feat_module = "branches.0"  # its input, the map all four classifiers share, is "feat" (Segmentor return_feat)
    atrous = ("rates", BASE_RATES, 8)

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index: int | Sequence[int] = -1,
                 rates: Sequence[int] = BASE_RATES):
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise ContextSegError(f"ASPP-L rates must be positive integers, got {rates!r}; e.g. rates=[6, 12, 18, 24]")
        super().__init__(in_channels, num_classes, in_index)
        self.rates = tuple(rates)
        c = self.inputs.out_channels
        self.branches = nn.ModuleList(
            init_classifier(AtrousConv2d(c, num_classes, kernel_size=3, padding=r, dilation=r)) for r in self.rates
        )

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        x = self.inputs(feats)
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return {"out": out}
