"""Evaluation of a segmentation model on whole images at their own size."""
from __future__ import annotations

import torch
from tqdm import tqdm

from ..metrics import SegMetric
from .runtime import autocast


@torch.no_grad()
def evaluate(model, loader, num_classes: int, class_names=None, ignore_index: int = 255,
             device: torch.device | str = "cpu", amp: str = "none", channels_last: bool = False,
             progress: bool = True, desc: str = "eval", distributed: bool = False) -> dict:
    """Run `model(x)["out"]` over `loader` of (image, label) batches and return mIoU, per-class IoU,
    pixel accuracy and mean accuracy (see contextseg.metrics). Restores the model's train/eval mode.

    distributed: every rank holds a disjoint shard of the set in `loader` (runtime.ShardSampler); the
    confusion matrices are summed over ranks (all_reduce) and every rank returns the metrics of the whole set."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    metric = SegMetric(num_classes, ignore_index, class_names)
    for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)["out"]
        metric.update(logits.float(), labels.to(device))
    model.train(was_training)
    if distributed:
        from .distributed import all_reduce_sum

        all_reduce_sum(metric.matrix)
    return metric.compute()
