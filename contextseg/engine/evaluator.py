"""Evaluation loops on whole images at their own size, and where they run (``EvalRuntime``)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..metrics import SegMetric
from ..models.resize import align_corners_of, resize
from . import distributed as dist_utils
from .runtime import autocast


@dataclass
class EvalRuntime:
    """Where and how an evaluation runs: device, autocast precision (``amp``: none | bf16 | fp16 | auto),
    channels_last inputs, progress bars, and ``distributed`` (the loader holds this rank's shard: counts are summed
    over the ranks, so every rank returns the whole set's metrics)."""
    device: torch.device | str = "cpu"
    amp: str = "none"
    channels_last: bool = False
    progress: bool = True
    distributed: bool = False

    @classmethod
    def from_config(cls, cfg, device=None, progress: bool = True, amp: str | None = None) -> "EvalRuntime":
        """The config's amp / channels_last on ``device`` (default: this process's device); distributed when
        this process is one of several."""
        return cls(device if device is not None else dist_utils.device_for(cfg.device),
                   cfg.train.amp if amp is None else amp, cfg.train.channels_last, progress,
                   dist_utils.get_world_size() > 1)


def eval_batches(model, loader, runtime: EvalRuntime = EvalRuntime(), desc: str = "eval", per_batch=None):
    """Yield (logits, labels): ``model(x)["out"]`` as float32 (on the device) resized to the labels' size with the
    model's ``align_corners``, for each (image, label) batch of ``loader``, in eval mode without gradients; the
    model's train/eval mode is restored when the loop ends or stops early (every dense evaluation shares it).
    ``per_batch(labels)``: a context manager entered around each forward pass with the batch's labels on the
    device (GT-OCR hands them to the model that way)."""
    device = torch.device(runtime.device)
    align_corners = align_corners_of(model)
    was_training = model.training
    model.eval()
    try:
        for images, labels in tqdm(loader, desc=desc, disable=not runtime.progress, leave=False, dynamic_ncols=True):
            images = images.to(device, non_blocking=True)
            if runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            context = per_batch(labels.to(device)) if per_batch is not None else contextlib.nullcontext()
            with torch.no_grad(), context, autocast(device, runtime.amp):
                logits = model(images)["out"]
            yield resize(logits.float(), labels.shape[-2:], align_corners), labels
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(model, loader, num_classes: int, class_names=None, ignore_index: int = 255,
             runtime: EvalRuntime = EvalRuntime(), desc: str = "eval", per_batch=None) -> dict:
    """Run ``model(x)["out"]`` over ``loader`` of (image, label) batches and return mIoU, per-class IoU,
    pixel accuracy and mean accuracy (see contextseg.metrics). Restores the model's train/eval mode.
    Distributed (``runtime.distributed``): each rank holds a disjoint shard (runtime.ShardSampler); the confusion
    matrices are summed over ranks and every rank returns the metrics of the whole set."""
    metric = SegMetric(num_classes, ignore_index, class_names)
    for logits, labels in eval_batches(model, loader, runtime, desc, per_batch):
        metric.update(logits, labels.to(logits.device))
    if runtime.distributed:
        dist_utils.all_reduce_sum(metric.matrix)
    return metric.compute()
