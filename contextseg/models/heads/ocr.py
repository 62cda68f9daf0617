"""OCR head (Yuan, Chen & Wang 2020, "Object-Contextual Representations for Semantic Segmentation", Sec. 3.2-3.3,
Fig. 3), as in the official HRNet + OCR model (HRNet-Semantic-Segmentation, branch HRNet-OCR).

A pixel's representation x_i is augmented with the representations of the object regions it probably belongs to:

    soft object regions      M = aux_head(u)                          K maps, supervised by the ground truth ("aux")
    object region repr.      f_k = sum_i softmax_i(m_ki) x_i                               (paper Eq. 3)
    pixel-region relation    w_ik = exp(kappa(x_i, f_k)) / sum_j exp(kappa(x_i, f_j)),
                             kappa(x, f) = phi(x)^T psi(f) / sqrt(C_key)                  (Eq. 4)
    object contextual repr.  y_i = rho(sum_k w_ik delta(f_k))                              (Eq. 5)
    augmented repr.          z_i = g([x_i^T, y_i^T]^T)                                     (Eq. 6)

u is the concatenation of the resized backbone maps and x = conv3x3(u) the pixel representations. phi and psi are
two 1x1 conv-BN-ReLU layers, delta, rho and g one each. The 1/sqrt(C_key) scaling is in the official code, not in
the paper's equation.

GT-OCR (the paper's Fig. 1 oracle, openseg's ``use_gt``): ``OCRHead.oracle`` set to ground-truth labels (B, H, W)
replaces the soft object regions by the one-hot ground truth, downsampled (nearest) to the pixel map: f_k is then the
mean of x over the pixels of class k (ignored pixels form one more region, as openseg's ``label_to_onehot``), and in
mode "full" also w_ik by the pixel's own class (w_ik = 1 for its class). ``oracle_regions(model, labels, mode)``
sets it for one forward pass.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...registry import HEADS
from ..attention import upcast
from .common import DecodeHead, conv_bn_relu


def bn_relu(c: int) -> nn.Sequential:
    """BN + ReLU as one child, the layout of the official ``ModuleHelper.BNReLU`` (keeps state_dict keys equal)."""
    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))


class SpatialGather(nn.Module):
    """Object region representations (Eq. 3): f_k = sum_i softmax over pixels i of m_ki, times x_i.

    feats (B, C, H, W), region logits (B, K, H, W) -> (B, C, K, 1)  (K "pixels" of a 1-wide map, so that 1x1 convs
    apply to the region vectors).
    """

    def forward(self, feats: Tensor, probs: Tensor, onehot: Tensor | None = None) -> Tensor:
        """``onehot`` (B, K', H, W) ground-truth regions (GT-OCR): f_k = the mean of x over region k instead."""
        if onehot is not None:
            weights = F.normalize(onehot.flatten(2).float(), p=1, dim=2).to(feats.dtype)  # (B, K', HW)
        else:
            b, k = probs.shape[:2]
            weights = F.softmax(upcast(probs.reshape(b, k, -1)), dim=2).to(feats.dtype)  # (B, K, HW), over pixels
        pixels = feats.permute(0, 2, 3, 1).flatten(1, 2)  # (B, HW, C): a view when feats is channels_last
        regions = torch.matmul(weights, pixels)  # (B, K, C)
        return regions.permute(0, 2, 1).unsqueeze(3)


class ObjectAttentionBlock(nn.Module):
    """Object contextual representation y (Eqs. 4-5): pixels (B, C, H, W), regions (B, C, K, 1) -> (B, C, H, W).

    query phi(x) (B, HW, C_key), key psi(f) (B, C_key, K), value delta(f) (B, K, C_key);
    w = softmax_k(query @ key / sqrt(C_key)) (B, HW, K); y = rho(w @ value) with rho: C_key -> C.
    """

    def __init__(self, in_channels: int, key_channels: int):
        super().__init__()
        self.key_channels = key_channels
        c, ck = in_channels, key_channels
        self.f_pixel = nn.Sequential(  # phi
            nn.Conv2d(c, ck, 1, bias=False), bn_relu(ck), nn.Conv2d(ck, ck, 1, bias=False), bn_relu(ck)
        )
        self.f_object = nn.Sequential(  # psi
            nn.Conv2d(c, ck, 1, bias=False), bn_relu(ck), nn.Conv2d(ck, ck, 1, bias=False), bn_relu(ck)
        )
        self.f_down = nn.Sequential(nn.Conv2d(c, ck, 1, bias=False), bn_relu(ck))  # delta
        self.f_up = nn.Sequential(nn.Conv2d(ck, c, 1, bias=False), bn_relu(c))  # rho

    def forward(self, x: Tensor, proxy: Tensor, relations: Tensor | None = None) -> Tensor:
        """``relations`` (B, HW, K) given (GT-OCR "full": each pixel's one-hot class) replace w."""
        b, _, h, w = x.shape
        value = self.f_down(proxy).flatten(2).transpose(1, 2)  # (B, K, Ck)
        if relations is not None:
            sim = relations.to(value.dtype)
        else:
            query = self.f_pixel(x).permute(0, 2, 3, 1).flatten(1, 2)  # (B, HW, Ck)
            key = self.f_object(proxy).flatten(2)  # (B, Ck, K)
            sim = torch.matmul(query, key) * self.key_channels**-0.5  # (B, HW, K)
            sim = F.softmax(upcast(sim), dim=-1).to(value.dtype)
        context = torch.matmul(sim, value)  # (B, HW, Ck)
        context = context.reshape(b, h, w, self.key_channels).permute(0, 3, 1, 2)  # NCHW view, channels_last strides
        return self.f_up(context)


class SpatialOCR(nn.Module):
    """Augmented representation (Eq. 6): z = g([y, x]) with g a 1x1 conv-BN-ReLU + Dropout2d.

    pixels (B, C, H, W), regions (B, C, K, 1) -> (B, out_channels, H, W). The concat order [context, pixels]
    follows the official code.
    """

    def __init__(self, in_channels: int, key_channels: int, out_channels: int, dropout: float = 0.05):
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(in_channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(2 * in_channels, out_channels, 1, bias=False), bn_relu(out_channels), nn.Dropout2d(dropout)
        )

    def forward(self, feats: Tensor, proxy: Tensor, relations: Tensor | None = None) -> Tensor:
        context = self.object_context_block(feats, proxy, relations)
        return self.conv_bn_dropout(torch.cat([context, feats], dim=1))


@HEADS.register("ocr")
class OCRHead(DecodeHead):
    """HRNet + OCR head: [(B, C_i, H_i, W_i)] -> {"out": (B, K, H_0, W_0), "aux": (B, K, H_0, W_0)}.

    H_0, W_0 is the size of the first (highest-resolution) map: ceil(H/4), ceil(W/4) for an (H, W) image on HRNet.

        u      = concat_i resize(x_i, (H_0, W_0))               (B, sum C_i, H_0, W_0)
        aux    = conv1x1(ReLU(BN(conv1x1(u) + b))) + b           (B, K, H_0, W_0)   soft object regions
        x      = ReLU(BN(conv3x3(u) + b))                        (B, mid, H_0, W_0) pixel representations
        f      = SpatialGather(x, aux)                           (B, mid, K, 1)     object region representations
        x'     = SpatialOCR(x, f)                                (B, mid, H_0, W_0) augmented representations
        out    = conv1x1(x') + b                                 (B, K, H_0, W_0)

    Layer names follow the official model (``conv3x3_ocr``, ``ocr_distri_head``, ``cls_head``, ``aux_head``).
    ``in_index`` picks other maps for u (``FeatureAdapter``): ``in_index=0`` runs OCR on HRNetV1 (the
    highest-resolution branch alone), ``in_index=-1`` on a dilated ResNet's c5. "ocr" in ``HEADS``: on the
    backbone's default map(s).
    """

    feat_module = "cls_head"  # its input is the penultimate representation (Segmentor(..., return_feat=True))

    def __init__(self, in_channels: Sequence[int], num_classes: int, mid_channels: int = 512, key_channels: int = 256,
                 dropout: float = 0.05, in_index: int | Sequence[int] | None = None):
        super().__init__(in_channels, num_classes, in_index)  # None: all maps (HRNetV2)
        c = self.inputs.out_channels
        self.conv3x3_ocr = conv_bn_relu(c, mid_channels, kernel_size=3, bias=True)
        self.ocr_gather_head = SpatialGather()
        self.ocr_distri_head = SpatialOCR(mid_channels, key_channels, mid_channels, dropout=dropout)
        self.cls_head = nn.Conv2d(mid_channels, num_classes, kernel_size=1)
        self.aux_head = nn.Sequential(
            *conv_bn_relu(c, c, kernel_size=1, bias=True), nn.Conv2d(c, num_classes, kernel_size=1)
        )
        self.oracle: Tensor | None = None  # ground-truth labels (B, H, W) for GT-OCR (oracle_regions)
        self.oracle_mode = "regions"

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        u = self.inputs(feats)  # (B, sum C_i, H_0, W_0)
        aux = self.aux_head(u)  # soft object regions
        x = self.conv3x3_ocr(u)
        onehot = relations = None
        if self.oracle is not None:
            onehot = label_onehot(self.oracle, self.num_classes, x.shape[-2:])  # (B, K + 1, H_0, W_0)
            if self.oracle_mode == "full":
                relations = onehot.flatten(2).transpose(1, 2)  # (B, HW, K + 1): each pixel's own region
        regions = self.ocr_gather_head(x, aux, onehot)
        x = self.ocr_distri_head(x, regions, relations)
        return {"out": self.cls_head(x), "aux": aux}


def label_onehot(labels: Tensor, num_classes: int, size) -> Tensor:
    """(B, H, W) labels in 0..K-1 or ignore -> (B, K + 1, h, w) one-hot at ``size`` (nearest); channel K marks
    the ignored pixels (openseg ``label_to_onehot``)."""
    small = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()
    small = torch.where((small >= 0) & (small < num_classes), small, torch.full_like(small, num_classes))
    return F.one_hot(small, num_classes + 1).permute(0, 3, 1, 2).float()


def ocr_head(model: nn.Module) -> OCRHead | None:
    """``model``'s OCR head, also through a ``MultiScale`` wrapper whose passes all see the image as it is (no flip,
    no sliding windows: the labels, resized to each pass's feature map, then cover the same pixels); else None."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(model, "scales") and not model.flip and model.window is None:
        model = inner
    head = getattr(model, "head", None)
    return head if isinstance(head, OCRHead) else None


@contextmanager
def oracle_regions(model: nn.Module, labels: Tensor, mode: str = "regions"):
    """GT-OCR for the forward passes inside the block: ``model``'s OCR head uses ``labels`` (B, H, W) as its object
    regions ("regions") or as regions and pixel-region relations ("full")."""
    head = ocr_head(model)
    if head is None:
        raise TypeError("oracle regions need a model with an OCR head")
    if mode not in ("regions", "full"):
        raise ValueError(f"oracle mode must be 'regions' or 'full', got {mode!r}")
    head.oracle, head.oracle_mode = labels, mode
    try:
        yield model
    finally:
        head.oracle = None
