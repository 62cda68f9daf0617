"""Evaluation of a segmentation model on whole images at their own size."""
from __future__ import annotations

import torch
from tqdm import tqdm

from ..metrics import SegMetric
from ..models.resize import align_corners_of, resize
from .runtime import autocast


def eval_batches(model, loader, device: torch.device | str = "cpu", amp: str = "none", channels_last: bool = False,
                 progress: bool = True, desc: str = "eval"):
    """Yield (logits, labels): ``model(x)["out"]`` as float32 (on ``device``) resized to the labels' size with the
    model's ``align_corners``, for each (image, label) batch of ``loader``, in eval mode without gradients; the model's train/eval mode is restored when the loop ends or
    stops early (the segmentation and the saliency evaluation share this loop)."""
    device = torch.device(device)
    align_corners = align_corners_of(model)
    was_training = model.training
    model.eval()
    try:
        for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), autocast(device, amp):
                logits = model(images)["out"]
            yield resize(logits.float(), labels.shape[-2:], align_corners), labels
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(model, loader, num_classes: int, class_names=None, ignore_index: int = 255,
             device: torch.device | str = "cpu", amp: str = "none", channels_last: bool = False,
             progress: bool = True, desc: str = "eval", distributed: bool = False) -> dict:
    """Run `model(x)["out"]` over `loader` of (image, label) batches and return mIoU, per-class IoU,
    pixel accuracy and mean accuracy (see contextseg.metrics). Restores the model's train/eval mode.

    distributed: every rank holds a disjoint shard of the set in `loader` (runtime.ShardSampler); the
    confusion matrices are summed over ranks (all_reduce) and every rank returns the metrics of the whole set."""
    metric = SegMetric(num_classes, ignore_index, class_names)
    for logits, labels in eval_batches(model, loader, device, amp, channels_last, progress, desc):
        metric.update(logits, labels.to(logits.device))
    if distributed:
        from .distributed import all_reduce_sum

        all_reduce_sum(metric.matrix)
    return metric.compute()
