"""Segmentation losses. Each takes logits (B, K, h, w) and labels (B, H, W) int64 and resizes the
logits to the labels (bilinear, with the model's ``align_corners``: the trainer copies it into the loss with
``models.resize.set_align_corners``) before comparing, so models keep their stride-4 outputs.
Pixels labelled ``ignore_index`` (255) never count; a batch of only ignored pixels gives 0.

    "ce"     CrossEntropy: CE with ignore index and optional class weights (a list, or median-frequency
             balancing from the training labels: ``loss.kwargs.class_weights: median_frequency``).
    "ohem"   OhemCrossEntropy: CE over the hard pixels only (official HRNet-OCR ``lib/core/criterion.py``); in
             ``build_loss`` it applies to the final output "out" only, every other output gets plain CE, as
             the official code (``[_ce_forward] * (n - 1) + [_ohem_forward]``) and openseg's ``FSAuxOhemCELoss``.
    "focal"  FocalLoss (Lin et al. 2017, Eq. 5): -alpha_t (1 - p_t)^gamma log p_t.

`OutputsLoss` (losses/outputs.py) combines pixel losses over a model's output dict by name, e.g. OCR's
CE(out) + 0.4 * CE(aux) (Yuan et al. 2020, Sec. 3.3); names may be glob patterns ("out_s*").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ContextSegError
from ..models.resize import DEFAULT_ALIGN_CORNERS, resize
from ..registry import LOSSES


def resize_to(logits: torch.Tensor, size, align_corners: bool = DEFAULT_ALIGN_CORNERS) -> torch.Tensor:
    """(B, K, h, w) -> (B, K, *size), bilinear (unchanged when already that size)."""
    return resize(logits, size, align_corners)


def _weights_tensor(values, name: str = "class_weights") -> torch.Tensor | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise ContextSegError(f"{name}={values!r} must be resolved from the training labels first: build the loss "
                              f"with contextseg.losses.build_loss_for(cfg, dataset), or give a list of floats")
    w = torch.as_tensor(values, dtype=torch.float32).flatten()
    if (w < 0).any() or not torch.isfinite(w).all():
        raise ContextSegError(f"{name} must be finite and >= 0, got {list(map(float, w))}")
    return w


def _check_weights(weights: torch.Tensor | None, num_classes: int, name: str = "class_weights") -> None:
    if weights is not None and weights.numel() != num_classes:
        raise ContextSegError(f"{name} has {weights.numel()} values but the model predicts {num_classes} classes; "
                              f"give one weight per class")


@LOSSES.register("ce")
class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy with an ignore index and optional per-class weights.

    With weights w the mean is weighted as torch's: sum_i w_{y_i} CE_i / sum_i w_{y_i}.
    """

    def __init__(self, ignore_index: int = 255, class_weights: Sequence[float] | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", _weights_tensor(class_weights), persistent=False)
        self.align_corners = DEFAULT_ALIGN_CORNERS  # the model's, set by the trainer

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = resize_to(logits, labels.shape[-2:], self.align_corners).float()
        if (labels == self.ignore_index).all():
            return logits.sum() * 0.0  # keeps the graph; an all-ignore crop contributes nothing
        _check_weights(self.class_weights, logits.shape[1])
        return F.cross_entropy(logits, labels, weight=self.class_weights, ignore_index=self.ignore_index)


@LOSSES.register("ohem")
class OhemCrossEntropy(nn.Module):
    """Online hard example mining CE, as the official HRNet-OCR code (HRNet-Semantic-Segmentation, branch
    HRNet-OCR, ``lib/core/criterion.py``, ``OhemCrossEntropy``). Defaults are the official configuration's:
    thresh = ``LOSS.OHEMTHRES`` 0.9 (``lib/config/default.py``), min_kept = ``LOSS.OHEMKEEP`` 131072 (the Cityscapes
    OCR yaml ``seg_hrnet_ocr_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml``; default.py: 100000). That
    yaml itself trains with ``USE_OHEM: false``, i.e. plain CE.

    (B, K, h, w) logits, (B, H, W) labels -> scalar. Over the valid (non-ignored) pixels of the whole
    batch, p_i = softmax(logits)_i[y_i] is the predicted probability of the true class. Kept pixels:
    every pixel with p_i < thresh, and at least the ``min_kept`` pixels of lowest p_i (the threshold is
    raised to the min_kept-th smallest probability when fewer than min_kept pixels are below thresh).
    The loss is the plain mean of the per-pixel CE (class-weighted when class_weights is given, as the
    official code does) over the kept pixels. The selection carries no gradient.

    The official code keeps ``p < max(sorted_p[min(min_kept, n - 1)], thresh)``; that is the same set
    when the probabilities are distinct and min_kept < n. Here min_kept is counted by rank, so ties never
    drop pixels and min_kept >= n keeps every valid pixel (the official code then drops the most confident one).
    """

    def __init__(self, thresh: float = 0.9, min_kept: int = 131072, ignore_index: int = 255,
                 class_weights: Sequence[float] | None = None):
        super().__init__()
        if not 0.0 < thresh <= 1.0:
            raise ContextSegError(f"ohem thresh is a probability in (0, 1], got {thresh}")
        self.thresh = float(thresh)
        self.min_kept = max(1, int(min_kept))
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", _weights_tensor(class_weights), persistent=False)
        self.align_corners = DEFAULT_ALIGN_CORNERS  # the model's, set by the trainer

    @torch.no_grad()
    def kept_mask(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) bool: the pixels the loss averages over (logits already at label size)."""
        valid = labels != self.ignore_index
        target = labels.masked_fill(~valid, 0)
        prob = logits.float().softmax(dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        keep = valid & (prob < self.thresh)
        n_valid = int(valid.sum())
        if int(keep.sum()) < min(self.min_kept, n_valid):
            flat = prob.masked_fill(~valid, float("inf")).flatten()
            idx = torch.topk(flat, min(self.min_kept, n_valid), largest=False).indices
            keep = keep.flatten().index_fill(0, idx, True).view_as(keep)
        return keep

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = resize_to(logits, labels.shape[-2:], self.align_corners).float()
        if (labels == self.ignore_index).all():
            return logits.sum() * 0.0
        _check_weights(self.class_weights, logits.shape[1])
        keep = self.kept_mask(logits, labels)
        pixel = F.cross_entropy(logits, labels, weight=self.class_weights, ignore_index=self.ignore_index,
                                reduction="none")
        return pixel[keep].mean()


@LOSSES.register("focal")
class FocalLoss(nn.Module):
    """Focal loss, Lin et al. 2017 ("Focal Loss for Dense Object Detection", Eq. 5), softmax form:

        FL_i = -alpha_{y_i} (1 - p_i)^gamma log p_i,   p_i = softmax(logits)_i[y_i],

    averaged over the non-ignored pixels (plain mean, not divided by the alphas). (B, K, h, w) logits,
    (B, H, W) labels -> scalar. gamma = 0 with alpha None is cross-entropy exactly.

    alpha: None -> 1 for every class; a list -> one weight per class; a float a -> the binary form of
    the paper with class 0 as the negative ("background") class: alpha_t = 1 - a for label 0 and a for
    every other label (for K = 2 this is the paper's alpha with class 1 positive). Use a list for
    datasets whose class 0 is not background.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None, ignore_index: int = 255):
        super().__init__()
        if gamma < 0:
            raise ContextSegError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.ignore_index = ignore_index
        self.align_corners = DEFAULT_ALIGN_CORNERS  # the model's, set by the trainer
        self.alpha_scalar = None
        alpha_t = None
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            if not 0.0 <= alpha <= 1.0:
                raise ContextSegError(f"a single focal alpha is a weight in [0, 1], got {alpha}; give a list for "
                                      f"per-class weights")
            self.alpha_scalar = float(alpha)
        else:
            alpha_t = _weights_tensor(alpha, "alpha")
        self.register_buffer("alpha", alpha_t, persistent=False)

    def class_alpha(self, num_classes: int, device) -> torch.Tensor | None:
        if self.alpha_scalar is not None:
            a = torch.full((num_classes,), self.alpha_scalar, device=device)
            a[0] = 1.0 - self.alpha_scalar
            return a
        _check_weights(self.alpha, num_classes, "focal alpha")
        return self.alpha

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = resize_to(logits, labels.shape[-2:], self.align_corners).float()
        valid = labels != self.ignore_index
        if not valid.any():
            return logits.sum() * 0.0
        target = labels.masked_fill(~valid, 0)
        logpt = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)[valid]
        loss = -logpt
        if self.gamma != 0:
            pt = logpt.exp()
            loss = (1.0 - pt).clamp_min(0.0).pow(self.gamma) * loss
        alpha = self.class_alpha(logits.shape[1], logits.device)
        if alpha is not None:
            loss = alpha[target[valid]] * loss
        return loss.mean()


# ----------------------------------------------------------------------------- class weights


def _label_source(data):
    """Yield uint8/int label arrays, one per image, from a dataset or an iterable of labels."""
    if hasattr(data, "load_label") and hasattr(data, "__len__"):  # reads the mask file only
        for i in range(len(data)):
            yield np.asarray(data.load_label(i))
    elif hasattr(data, "raw") and hasattr(data, "__len__"):  # untransformed (image, label)
        for i in range(len(data)):
            yield np.asarray(data.raw(i)[1])
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (np.ndarray, torch.Tensor)):
        first = data[0] if len(data) else None
        if isinstance(first, tuple):  # a dataset of (image, label) pairs
            for i in range(len(data)):
                yield _to_numpy(data[i][1])
        else:
            for item in data:
                yield from _split_batch(_to_numpy(item))
    else:
        for item in data:
            yield from _split_batch(_to_numpy(item))


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _split_batch(a: np.ndarray):
    if a.ndim == 3:  # (B, H, W)
        yield from a
    else:
        yield a


def median_frequency_weights(dataset_or_label_iter, num_classes: int, ignore_index: int = 255,
                             progress: bool = False) -> list[float]:
    """Median-frequency class balancing (Eigen & Fergus 2015; SegNet, Badrinarayanan et al. 2017, Sec. 4):

        freq_c = (pixels of class c) / (labelled pixels of the images in which c is present)
        w_c = median_c(freq_c) / freq_c

    Ignored pixels count nowhere; the median is over the classes that occur; a class that never occurs
    gets weight 1.0 (it has no pixels to weight). Counts come from the raw labels (no augmentation):
    a dataset's ``load_label(i)`` or ``raw(i)`` when it has one, else ``dataset[i][1]``; or any iterable
    of (H, W) / (B, H, W) label arrays or tensors. Returns a list of num_classes floats.
    """
    counts = np.zeros(num_classes, dtype=np.float64)
    totals = np.zeros(num_classes, dtype=np.float64)
    labels = _label_source(dataset_or_label_iter)
    if progress:
        from tqdm import tqdm

        labels = tqdm(labels, total=len(dataset_or_label_iter) if hasattr(dataset_or_label_iter, "__len__") else None,
                      desc="class frequencies", dynamic_ncols=True)
    for label in labels:
        flat = np.asarray(label).ravel().astype(np.int64)
        flat = flat[flat != ignore_index]
        if flat.size == 0:
            continue
        if flat.min() < 0 or flat.max() >= num_classes:
            bad = np.unique(flat[(flat < 0) | (flat >= num_classes)])[:5].tolist()
            raise ContextSegError(f"label values {bad} are outside 0..{num_classes - 1} and not the ignore index "
                                  f"{ignore_index}; fix the labels or the number of classes")
        c = np.bincount(flat, minlength=num_classes)
        counts += c
        totals += (c > 0) * flat.size
    present = counts > 0
    if not present.any():
        raise ContextSegError("cannot compute median-frequency weights: every label pixel is ignored")
    freq = np.where(present, counts / np.maximum(totals, 1), 0.0)
    median = float(np.median(freq[present]))
    return [float(median / f) if p else 1.0 for f, p in zip(freq, present)]
