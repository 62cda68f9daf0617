"""Stage-2 pseudo labels from a stage-1 SSNet (Zeng et al. ICCV 2019, Sec. 3 / Fig. 2: "the network is trained with
predicted segmentation results by the model trained in the first stage"; official ``syn_stage1.py``).

Per training image, with z (C + 1, H, W) the logits upsampled (bilinear) to the image, v (C,) the SAM scores and
y (C,) the image-level labels:

    1. keep background + the labelled classes (``rule``):
       "official" (default; ``syn_stage1.py``: ``batch_seg[:, 1:] *= gt_cls[:, 1:]``, then ``softmax`` and
                  ``max(1)`` of the same logits): z~_c = z_c y_c, absent classes get logit 0, not -inf, so they stay
                  in the softmax and one of them wins wherever every kept logit is negative (an absent class can be a
                  pseudo label);
       "restrict" (ours): absent classes removed, z~_c = -inf, i.e. P restricted to the kept classes and
                  renormalised; only labelled classes (or background) are ever chosen.
       P~ = softmax(z~)
    2. c* = argmax z~,  label = c* where max P~ >= min_prob, else 255 (unsure)
    3. optional, ``bg_threshold`` t: S~ = sum_{c >= 1} v_c P~_c; label = background where S~ < t, and 255 where c* is
       background but S~ >= t (segmentation and saliency disagree)
    4. channels -> dataset classes: background becomes the dataset's background class, or 255 when it has none
       (CamVid), so stage 2 never learns a class that the evaluation does not know.

The official code then runs a dense CRF (5 mean-field iterations on the softmax P~, pydensecrf) and trains stage 2 on
its arg max; its later version labels ten random augmentations of each image (crop 0.9, flip, rotation up to 10
degrees), each kept as its own stage-2 training sample. Neither is here. The confidence threshold (``min_prob``) and
the saliency rule of step 3 are our additions; ``rule="official", min_prob=0, bg_threshold=None`` (the defaults) is
the official rule without CRF. The written PNGs hold dataset class indices and 255.

The true label maps are read only after each pseudo label is made, for the report: mIoU counting unlabelled (255)
pixels as misses (``mIoU``), mIoU over the labelled pixels only (``mIoU_labelled``), and ``coverage``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ...config import Config
from ...data import eval_transform
from ...data.weak import IGNORE, WeakImages, WeakSpec, image_keys, image_labels_for, label_map_of
from ...errors import ContextSegError
from ...metrics import confusion_matrix, format_table, metrics_from_confusion
from ...models.resize import align_corners_of, resize
from ...engine.runtime import autocast, select_device
from .task import WeakTask, load_ssnet


RULES = ("official", "restrict")


def pseudo_label(logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None,
                 min_prob: float = 0.0, bg_threshold: float | None = None, rule: str = "official") -> torch.Tensor:
    """(C + 1, H, W) logits (channel 0 background), (C,) image labels {0, 1}, (C,) SAM scores -> (H, W) int64
    channel indices, 255 where unsure (the rule in the module docstring)."""
    if logits.dim() != 3 or logits.shape[0] != labels.numel() + 1:
        raise ContextSegError(f"pseudo_label takes (C + 1, H, W) logits for C = {labels.numel()} image labels, "
                              f"got {tuple(logits.shape)}")
    if rule not in RULES:
        raise ContextSegError(f"pseudo-label rule must be one of {RULES}, got {rule!r}")
    keep = torch.cat([labels.new_ones(1), labels.flatten()]).bool().to(logits.device)[:, None, None]
    absent = 0.0 if rule == "official" else float("-inf")
    z = torch.where(keep, logits.float(), torch.full_like(logits, absent, dtype=torch.float32))
    probs = z.softmax(0)
    conf, best = probs.max(0)  # softmax is monotonic: the arg max of z~
    out = torch.where(conf >= min_prob, best, torch.full_like(best, IGNORE))
    if bg_threshold is not None:
        if scores is None:
            raise ContextSegError("bg_threshold needs the SAM scores (the saliency map decides background)")
        saliency = (probs[1:] * scores.float().to(logits.device)[:, None, None]).sum(0)
        out[(best == 0) & (saliency >= bg_threshold)] = IGNORE
        out[saliency < bg_threshold] = 0
    return out


def channels_to_classes(channels: np.ndarray, channel_to_class: np.ndarray) -> np.ndarray:
    """(H, W) channel indices or 255 -> uint8 dataset classes or 255."""
    table = np.full(256, IGNORE, dtype=np.uint8)
    table[:len(channel_to_class)] = channel_to_class
    return table[channels.astype(np.int64)]


def confusion_with_unlabelled(pred: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """(K, K + 1) counts over pixels with a true class: column K = the pseudo label left it unlabelled (255)."""
    col = np.where(pred == IGNORE, k, pred).astype(np.int64)
    square = confusion_matrix(torch.from_numpy(col), torch.from_numpy(truth.astype(np.int64)), k + 1, IGNORE)
    return square[:k].numpy()  # no true pixel is in row K


def report_from_confusion(matrix: np.ndarray, classes) -> dict:
    k = len(classes)
    tp = np.diag(matrix[:, :k]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (matrix.sum(1) + matrix[:, :k].sum(0) - tp)
        acc = tp / matrix.sum(1)  # recall: unlabelled pixels count as misses
    labelled = metrics_from_confusion(matrix[:, :k], list(classes))
    return {"mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(classes, iou)},
            "mIoU_labelled": labelled["mIoU"], "pixel_acc_labelled": labelled["pixel_acc"],
            "coverage": float(matrix[:, :k].sum() / max(matrix.sum(), 1)),
            "per_class_acc": {n: (None if np.isnan(v) else float(v)) for n, v in zip(classes, acc)},
            "mean_acc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
            "pixel_acc": float(tp.sum() / max(matrix.sum(), 1))}


@torch.no_grad()
def write_pseudo_labels(cfg: Config, checkpoint, out_dir, split: str | None = None, min_prob: float = 0.0,
                        bg_threshold: float | None = None, progress: bool = True, report: bool = True,
                        rule: str = "official") -> dict:
    """Write OUT/STEM.png for every image of the segmentation set's ``split`` (default data.train_split) from the
    stage-1 ``checkpoint``, and OUT/pseudo_labels.json (settings and, with ``report``, the metrics against the true
    labels). ``rule`` / ``min_prob`` / ``bg_threshold``: see the module docstring (defaults: the official rule, no
    threshold, no saliency rule). Returns that JSON's content."""
    WeakTask().check(cfg)
    if not 0.0 <= min_prob <= 1.0 or (bg_threshold is not None and not 0.0 <= bg_threshold <= 1.0):
        raise ContextSegError("min_prob and bg_threshold are probabilities in [0, 1]")
    if rule not in RULES:
        raise ContextSegError(f"pseudo-label rule must be one of {RULES}, got {rule!r}")
    spec = WeakSpec.parse(cfg.data.kwargs)
    split = split or cfg.data.train_split
    seg = spec.segmentation_set(split)
    layout = spec.layout(seg)
    labels = image_labels_for(seg, spec.image_labels, spec.min_fraction, progress)
    images = WeakImages(seg, labels, layout, eval_transform())
    device = select_device(cfg.device)
    model = load_ssnet(checkpoint, layout, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = seg.num_classes
    matrix = np.zeros((k, k + 1), dtype=np.int64)
    keys = image_keys(seg)
    for i in tqdm(range(len(images)), desc="pseudo labels", disable=not progress, leave=False, dynamic_ncols=True):
        x, target = images[i]
        with autocast(device, cfg.train.amp):
            out = model(x[None].to(device))
        logits = resize(out["out"].float(), x.shape[-2:], align_corners_of(model))[0]
        channels = pseudo_label(logits, target["labels"], out["saliency_scores"][0], min_prob, bg_threshold, rule)
        pred = channels_to_classes(channels.cpu().numpy(), layout.channel_to_class)
        Image.fromarray(pred).save(out_dir / f"{keys[i]}.png")
        if report:  # the true labels, read after the pseudo label is written: evaluation only
            matrix += confusion_with_unlabelled(pred, np.asarray(label_map_of(seg, i)), k)
    result = {"checkpoint": str(checkpoint), "split": split, "images": len(images), "rule": rule, "min_prob": min_prob,
              "bg_threshold": bg_threshold, "classes": list(seg.classes)}
    if report:
        result.update(report_from_confusion(matrix, seg.classes))
        print(format_table(result))
        print(f"pseudo labels: mIoU {100 * result['mIoU']:.2f} (unlabelled pixels count as misses), "
              f"{100 * result['mIoU_labelled']:.2f} on the labelled pixels, coverage {100 * result['coverage']:.1f}%")
    (out_dir / "pseudo_labels.json").write_text(json.dumps(result, indent=2))
    return result
