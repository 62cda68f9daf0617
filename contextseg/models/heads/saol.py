"""Classification output layers: the Spatially Attentive Output Layer (Kim, Baek & Kim, CVPR 2020, "Spatially
Attentive Output Layer for Image Classification", Sec. 3, Eqs. 1-2) and the GAP-FC layer it replaces.

SAOL, on backbone maps [X^1, ..., X^L] (X^L the last, (B, C_L, h, w)); output grid H_o x W_o = h x w (paper):

    A   = softmax_ij( conv1x1(ReLU(BN(conv3x3(X^L)))) )                   (B, 1, h, w), sums to 1 over the h*w cells
    F   = concat_l ReLU(BN(conv1x1(resize(X^l, h x w))))   l in in_index  (B, n * mid, h, w)  the decoder-like part
    Z   = conv1x1(ReLU(BN(conv_k(F))))                                    (B, K, h, w)  "spatial_logits"
    Y   = softmax_k(Z)                                                    per cell a distribution over the K classes
    y^_k = sum_ij A_ij Y_kij                                              Eq. 2, a distribution over K
    out = log y^                                                          (B, K): logits whose softmax is y^, so CE(out)
                                                                          is the paper's -log y^_y; computed as one
                                                                          logsumexp(log A + log_softmax(Z)) (stable)
    gap = FC(GAP(X^L))                                                    (B, K)  Eq. 1, the GAP-FC branch kept for
                                                                          self-distillation

resize: adaptive average pooling to h x w for larger maps, bilinear for smaller ones. Followed from the paper: A
and Y normalised as Eq. 2 (A in [0,1]^{Ho x Wo}, Y in [0,1]^{K x Ho x Wo}), H_o x W_o = the last map's size, two
convs + spatial softmax for A on the last map, multi-level maps of several blocks resized to the output grid and
fused by convs for Y, and a GAP-FC branch distilled from SAOL. Our choices where the paper's text at hand gives no
number: the widths (``mid_channels`` = ``attention_channels`` = 32: the paper keeps SAOL's cost close to GAP-FC's;
on CIFAR ResNet-20 this head has 51k parameters and 3.2 MMACs at 8x8, against the network's 0.27M and 41 MMACs),
1x1 lateral convs after resizing (all convs run at h x w), a ``fuse_kernel`` x ``fuse_kernel`` (3) fusion conv,
classifier init N(0, 0.01), and a zero-initialised last attention conv, so training starts from uniform attention
(SAOL = the average of the cells' class distributions).

Parameters (n maps of widths C_l, K classes, m = mid_channels, a = attention_channels, k = fuse_kernel):
    attention 9 C_L a + 2a + a + 1;  laterals sum_l (C_l m + 2m);  fusion k^2 n m^2 + 2m;  classifier m K + K;
    GAP-FC C_L K + K.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ContextSegError
from ...registry import CLASSIFIERS
from ..backbones.init import he_init
from .common import DecodeHead, check_feats, conv_bn_relu, init_classifier


def resize_to_grid(x: Tensor, size: Sequence[int]) -> Tensor:
    """(B, C, H, W) -> (B, C, h, w): adaptive average pooling when H >= h and W >= w, else bilinear."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _indices(in_index, n: int) -> list[int]:
    index = list(range(n)) if in_index is None else ([in_index] if isinstance(in_index, int) else list(in_index))
    if not index or any(not isinstance(i, int) or not -n <= i < n for i in index):
        raise ContextSegError(f"in_index must name backbone maps 0..{n - 1} (or -1 for the last), got {in_index!r}")
    return [i % n for i in index]


def in_float32(forward, feats: Sequence[Tensor]):
    """``forward(feats)``, under autocast with autocast off and the maps cast to float32 (a head's ``float32``
    option: the output layer computes in float32 while the backbone stays bf16)."""
    device = feats[-1].device.type
    if not torch.is_autocast_enabled(device):
        return forward(feats)
    with torch.autocast(device, enabled=False):
        return forward([f.float() for f in feats])


@CLASSIFIERS.register("gap")
class GAPFCHead(DecodeHead):
    """The standard output layer (Eq. 1): [..., X^L] -> {"out": FC(GAP(X^L))} (B, K) logits. "gap" in
    ``CLASSIFIERS``."""

    task = "classification"
    eval_outputs = ("out",)
    backbone_options = ()

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index: int = -1, float32: bool = False):
        super().__init__(in_channels, num_classes, adapter=False)
        self.float32 = bool(float32)  # GAP and FC in float32 under autocast (as SAOLHead's option)
        self.in_index = _indices(in_index, len(self.in_channels))[0]
        self.fc = nn.Linear(self.in_channels[self.in_index], num_classes)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        check_feats(feats, self.in_channels, "GAPFCHead")
        return in_float32(self._forward, feats) if self.float32 else self._forward(feats)

    def _forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        return {"out": self.fc(feats[self.in_index].mean(dim=(2, 3)))}


@CLASSIFIERS.register("saol")
class SAOLHead(DecodeHead):
    """[X^1, ..., X^L] -> {"out": (B, K) log y^, "gap": (B, K), "spatial_logits": (B, K, h, w),
    "attention": (B, 1, h, w)} (see the module docstring); all four in eval mode too. "saol" in ``CLASSIFIERS``
    (with the GAP-FC branch "gap" for self-distillation)."""

    task = "classification"
    eval_outputs = ("out", "gap", "spatial_logits", "attention")
    backbone_options = ()

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index=None, mid_channels: int = 32,
                 attention_channels: int = 32, fuse_kernel: int = 3, gap: bool = True, float32: bool = False):
        super().__init__(in_channels, num_classes, adapter=False)
        self.float32 = bool(float32)  # compute the whole head in float32 under autocast (the backbone stays bf16)
        self.in_index = _indices(in_index, len(self.in_channels))
        if fuse_kernel not in (1, 3, 5):
            raise ContextSegError(f"fuse_kernel is 1, 3 or 5, got {fuse_kernel!r}")
        last = self.in_channels[-1]
        a = attention_channels
        self.attention = nn.Sequential(conv_bn_relu(last, a, 3), nn.Conv2d(a, 1, 1))
        self.laterals = nn.ModuleList(conv_bn_relu(self.in_channels[i], mid_channels, 1) for i in self.in_index)
        self.fuse = conv_bn_relu(len(self.in_index) * mid_channels, mid_channels, fuse_kernel)
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1)
        self.fc = nn.Linear(last, num_classes) if gap else None
        he_init(self)
        init_classifier(self.classifier)
        nn.init.zeros_(self.attention[1].weight)  # uniform attention at the start
        nn.init.zeros_(self.attention[1].bias)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        check_feats(feats, self.in_channels, "SAOLHead")
        return in_float32(self._forward, feats) if self.float32 else self._forward(feats)

    def _forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        last = feats[-1]
        b, _, h, w = last.shape
        log_a = self.attention(last).float().flatten(1).log_softmax(1)  # (B, h*w)
        lateral = [conv(resize_to_grid(feats[i], (h, w))) for conv, i in zip(self.laterals, self.in_index)]
        z = self.classifier(self.fuse(torch.cat(lateral, dim=1))).float()  # (B, K, h, w)
        log_y = z.flatten(2).log_softmax(1)  # (B, K, h*w)
        out = {"out": torch.logsumexp(log_y + log_a.unsqueeze(1), dim=2), "spatial_logits": z,
               "attention": log_a.exp().view(b, 1, h, w)}
        if self.fc is not None:
            out["gap"] = self.fc(last.mean(dim=(2, 3)))
        return out
