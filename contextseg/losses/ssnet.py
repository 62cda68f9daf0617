"""SSNet training objective (Zeng et al. ICCV 2019, Sec. 3 and Fig. 2; official training scripts of
github.com/zengxianyu/jsws) on one forward pass over a joint batch: the first B_s rows are segmentation images with
image-level labels (and, in stage 2, pseudo labels), the last B_t rows saliency images with masks.

    L = w_cls  BCE(sigmoid(class_logits), y)              multi-label classification (rows :B_s)
      + w_sal  L_sal(P_0, S; m) over the non-ignored pixels saliency (rows B_s:)
      + w_seg  CE(z, pseudo) ignoring 255                   stage 2: the pseudo labels of stage 1 (rows :B_s)

z: (B, C + 1, h, w) logits, resized (bilinear) to the label size for CE; P_0 = softmax(z)_0 the background
probability and S (B, 1, h, w) the aggregated saliency map, both resized likewise to the (B_t, H, W) mask m.

The saliency term, ``loss.kwargs.saliency``:
- "nll" (default): the official ``F.nll_loss(cat([P_0, S], 1), m)`` (``weak_seg_full_sal_train.py`` and
  ``self_seg_full_sal_train.py``), the negative log-likelihood loss applied to probabilities, not to their log:
  L_sal = -mean_pixels(m S + (1 - m) P_0). Linear in the probabilities, bounded in [-1, 0]; a non-salient pixel
  is pushed towards background (P_0), not merely away from S. Default because the official code is what trained the
  published models.
- "bce": the paper's text read as binary cross-entropy on S: -mean(m log S + (1 - m) log(1 - S)).

Class scores: ``class_logits`` of the head, the spatial mean of the class logits in stage 1 (official
``binary_cross_entropy_with_logits(pred_seg.mean(3).mean(2)[:, 1:], gt_cls[:, 1:])``) or the stage-2 FC classifier
(``cls_head="fc"``; official stage 2 ``F.binary_cross_entropy_with_logits(cls_fc[:, 1:], gt_cls[:, 1:])`` next to
``F.cross_entropy(pred_seg, plbl_seg)``, both weight 1). Departure: the official stage 1 adds a second BCE on the
stride-32 score map (``seg32x``); our head has one score map.

Weights ``loss.weights``: {cls: 1.0, saliency: 1.0, seg: 1.0} (the official weights, both stages); a term whose
targets are absent is skipped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ContextSegError
from ..models.resize import DEFAULT_ALIGN_CORNERS, resize

TERMS = ("cls", "saliency", "seg")
DEFAULT_WEIGHTS = {"cls": 1.0, "saliency": 1.0, "seg": 1.0}
SALIENCY_LOSSES = ("nll", "bce")


def _to_mask_size(x: Tensor, mask: Tensor, align_corners: bool = DEFAULT_ALIGN_CORNERS) -> Tensor:
    """(B, k, h, w) -> (B, k, H, W) float, bilinear (the model's ``align_corners``), for (B, H, W) masks."""
    return resize(x.float(), mask.shape[-2:], align_corners)


def saliency_bce(saliency: Tensor, mask: Tensor, ignore_index: int = 255, eps: float = 1e-6,
                 align_corners: bool = DEFAULT_ALIGN_CORNERS) -> Tensor:
    """(B, 1, h, w) probabilities S, (B, H, W) masks {0, 1, ignore} -> mean BCE over the non-ignored pixels."""
    s = _to_mask_size(saliency, mask, align_corners)[:, 0].clamp(eps, 1 - eps)
    valid = mask != ignore_index
    if not valid.any():
        return s.sum() * 0.0
    target = (mask == 1).float()
    bce = -(target * s.log() + (1 - target) * (1 - s).log())
    return bce[valid].mean()


def saliency_nll(background: Tensor, saliency: Tensor, mask: Tensor, ignore_index: int = 255,
                 align_corners: bool = DEFAULT_ALIGN_CORNERS) -> Tensor:
    """The official saliency loss: (B, 1, h, w) P_0, (B, 1, h, w) S, (B, H, W) masks {0, 1, ignore} ->
    -mean over the non-ignored pixels of (S where m = 1, P_0 where m = 0), i.e. ``F.nll_loss`` on the pair (P_0, S)
    without a log (official ``weak_seg_full_sal_train.py``). In [-1, 0]."""
    pair = _to_mask_size(torch.cat([background, saliency], 1), mask, align_corners)  # (B, 2, H, W)
    valid = mask != ignore_index
    if not valid.any():
        return pair.sum() * 0.0
    return F.nll_loss(pair, mask.long(), ignore_index=ignore_index)


class SSNetLoss(nn.Module):
    """(outputs of the joint batch, targets {"labels": (B_s, C), ["mask": (B_t, H, W)], ["pseudo": (B_s, H, W)
    channel indices or 255]}) -> (total, {"cls", "saliency", "seg"} parts). ``saliency``: "nll" (official) or
    "bce" (module docstring)."""

    def __init__(self, weights: dict | None = None, ignore_index: int = 255, saliency: str = "nll"):
        super().__init__()
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ContextSegError(f"loss.weights {unknown} are not SSNet terms; use {{cls: 1.0, saliency: 1.0, "
                                  f"seg: 1.0}} (seg: stage 2 with pseudo labels)")
        if saliency not in SALIENCY_LOSSES:
            raise ContextSegError(f"loss.kwargs.saliency must be one of {SALIENCY_LOSSES} (nll: the official code, "
                                  f"bce: BCE on S), got {saliency!r}")
        self.weights = {k: float(weights.get(k, 0.0)) for k in TERMS}
        self.ignore_index = ignore_index
        self.saliency = saliency
        self.align_corners = DEFAULT_ALIGN_CORNERS  # the model's, set by the trainer

    def forward(self, outputs: dict, targets: dict):
        labels = targets["labels"]
        bs = labels.shape[0]
        parts: dict[str, Tensor] = {}
        if self.weights["cls"]:
            logits = outputs["class_logits"][:bs].float()
            if logits.shape != labels.shape:
                raise ContextSegError(f"image labels {tuple(labels.shape)} do not match the class scores "
                                      f"{tuple(logits.shape)}; the model predicts another number of classes")
            parts["cls"] = F.binary_cross_entropy_with_logits(logits, labels.float())
        if self.weights["saliency"] and "mask" in targets:
            s, mask = outputs["saliency"][bs:], targets["mask"]
            if self.saliency == "bce":
                parts["saliency"] = saliency_bce(s, mask, self.ignore_index, align_corners=self.align_corners)
            else:
                background = outputs["out"][bs:].float().softmax(1)[:, :1]
                parts["saliency"] = saliency_nll(background, s, mask, self.ignore_index, self.align_corners)
        if self.weights["seg"] and "pseudo" in targets:
            pseudo = targets["pseudo"]
            z = resize(outputs["out"][:bs].float(), pseudo.shape[-2:], self.align_corners)
            parts["seg"] = (F.cross_entropy(z, pseudo, ignore_index=self.ignore_index)
                            if (pseudo != self.ignore_index).any() else z.sum() * 0.0)
        if not parts:
            raise ContextSegError("no SSNet loss term applies to this batch: set loss.weights cls / saliency / seg > 0 "
                                  "(seg needs data.kwargs.pseudo_labels)")
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, {k: v.detach() for k, v in parts.items()}
