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
pixels as misses (``mIoU``), mIoU over the labelled pixels only (``mIoU_labelled``), and ``coverage``. The report
never reads a file this run wrote (checked per file).

The output folder (``check_pseudo_label_folder``) is a new or empty folder, or one an earlier run wrote (it holds
pseudo_labels.json); a folder of the segmentation set's images or label maps, or any other non-empty folder, is
refused, so ground truth is never overwritten. Files are written through temp files + rename, under the folder lock
OUT/.contextseg.lock (one writer at a time; ``contextseg.engine.outputs.FolderLock``), and pseudo_labels.json says
``"complete": false`` until the last label map is written.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...config import Config
from ...data import eval_transform
from ...data.weak import IGNORE, WeakImages, WeakSpec, image_keys, image_labels_for, label_map_of
from ...errors import ContextSegError
from ...metrics import confusion_matrix, format_table, metrics_from_confusion
from ...models.resize import align_corners_of, resize
from ...engine.checkpoint import remove_stale_temps
from ...engine.outputs import LOCK_NAME, FolderLock, make_folder, save_image, write_text
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
    out_dir = check_pseudo_label_folder(out_dir, seg)  # before anything is read or written
    layout = spec.layout(seg)
    labels = image_labels_for(seg, spec.image_labels, spec.min_fraction, progress)
    images = WeakImages(seg, labels, layout, eval_transform())
    device = select_device(cfg.device)
    keys = image_keys(seg)
    model = load_ssnet(checkpoint, layout, device)
    k = seg.num_classes
    matrix = np.zeros((k, k + 1), dtype=np.int64)
    truth = getattr(seg, "masks", None)  # the true label files (None: a procedural set renders them)
    result = {"checkpoint": str(checkpoint), "split": split, "images": len(images), "rule": rule, "min_prob": min_prob,
              "bg_threshold": bg_threshold, "classes": list(seg.classes)}
    make_folder(out_dir)
    with FolderLock(out_dir, "pseudo-labels"):
        remove_stale_temps(out_dir)  # of a killed run
        write_text(out_dir / "pseudo_labels.json", json.dumps({**result, "complete": False}, indent=2))
        written: set[str] = set()
        for i in tqdm(range(len(images)), desc="pseudo labels", disable=not progress, leave=False,
                      dynamic_ncols=True):
            x, target = images[i]
            with autocast(device, cfg.train.amp):
                out = model(x[None].to(device))
            logits = resize(out["out"].float(), x.shape[-2:], align_corners_of(model))[0]
            channels = pseudo_label(logits, target["labels"], out["saliency_scores"][0], min_prob, bg_threshold, rule)
            pred = channels_to_classes(channels.cpu().numpy(), layout.channel_to_class)
            written.add(os.path.realpath(save_image(pred, out_dir / f"{keys[i]}.png")))
            if report:  # the true labels, read after the pseudo label is written: evaluation only
                if truth is not None and os.path.realpath(truth[i]) in written:
                    raise ContextSegError(f"the true label map {truth[i]} is a file this run wrote; give --out a "
                                          f"folder apart from the dataset's")
                matrix += confusion_with_unlabelled(pred, np.asarray(label_map_of(seg, i)), k)
        if report:
            result.update(report_from_confusion(matrix, seg.classes))
            print(format_table(result))
            print(f"pseudo labels: mIoU {100 * result['mIoU']:.2f} (unlabelled pixels count as misses), "
                  f"{100 * result['mIoU_labelled']:.2f} on the labelled pixels, coverage "
                  f"{100 * result['coverage']:.1f}%")
        write_text(out_dir / "pseudo_labels.json", json.dumps({**result, "complete": True}, indent=2))
    return result


def check_pseudo_label_folder(out_dir, seg) -> Path:
    """``out_dir`` as a Path, or one ContextSegError: a file; a folder that holds the segmentation set's images or
    label maps (ground truth would be overwritten, and the report could read pseudo labels as truth); a non-empty
    folder that holds no pseudo_labels.json (not an earlier pseudo-labels run: its files would mix with ours)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ContextSegError(f"--out {out} is a file; give a new folder for the pseudo labels")
    target = os.path.realpath(out)
    for what, files in (("label maps", getattr(seg, "masks", None) or []), ("images", getattr(seg, "files", None) or [])):
        folders = {os.path.realpath(Path(f).parent) for f in files}
        if target in folders:
            raise ContextSegError(f"--out {out} holds the segmentation set's {what}; pseudo labels would overwrite "
                                  f"or mix with them: choose a new folder, e.g. {out.parent / 'pseudo_labels'}")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir()
                        if p.name != LOCK_NAME and not (p.name.startswith(".") and p.name.endswith(".tmp")))
        if others and "pseudo_labels.json" not in others:
            raise ContextSegError(f"--out {out} already holds other files (e.g. {others[0]}) and no "
                                  f"pseudo_labels.json; give a new or empty folder, or one an earlier "
                                  f"`contextseg pseudo-labels` wrote")
    return out
