"""Semantic segmentation as the engine sees it: datasets, model, loss and evaluation built from a Config."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import Config
from ..data import build_dataset, eval_transform
from ..errors import ContextSegError
from ..data.mix import build_batch_mix
from ..losses import build_loss_for
from ..metrics import format_table
from ..models.ensemble import Ensemble
from ..models.multiscale import configure_inference, inference_spec
from . import distributed as dist_utils
from . import classification, saliency, weak
from .backends import default_backend, prepare
from .builders import build_datasets, build_model_for, eval_loader, is_saliency, load_for_eval
from .evaluator import evaluate
from .runtime import seed_everything, select_device
from .trainer import Trainer


def train(cfg: Config, resume: str | None = None, progress: bool = True, stop_at: int | None = None) -> dict:
    """Train a segmentation model as `cfg` says; returns the summary written to OUTPUT_DIR/summary.json.

    Launched by torchrun (WORLD_SIZE > 1 in the environment) this runs in every process: it joins the process
    group (NCCL on CUDA, gloo on the CPU), trains with DistributedDataParallel on data.batch_size samples per
    process, evaluates each rank's shard of the validation set and sums the confusion matrices; rank 0 writes
    the files. The group is destroyed at the end."""
    owns_group = dist_utils.init_distributed(cfg.device)
    ok = False
    try:
        summary = _train(cfg, resume, progress, stop_at)
        ok = True
        return summary
    finally:
        if owns_group:
            dist_utils.cleanup(ok)


def _train(cfg: Config, resume, progress: bool, stop_at) -> dict:
    if classification.is_classification_config(cfg):  # task "classification": engine/classification.py
        return classification.train_classification(cfg, resume, progress, stop_at)
    if weak.is_weak_config(cfg):  # SSNet, weak labels + saliency: engine/weak.py
        return weak.train_weak(cfg, resume, progress, stop_at)
    classification.check_arch(cfg, False)
    weak.check_config(cfg, False)
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    progress = progress and rank == 0
    seed_everything(cfg.seed, cfg.deterministic)
    train_set, val_set = build_datasets(cfg)
    sod = is_saliency(train_set)
    if sod and cfg.loss.name not in saliency.SALIENCY_LOSSES:
        raise ContextSegError(f"dataset {cfg.data.dataset!r} is for salient object detection: set loss.name to "
                              f"{' or '.join(saliency.SALIENCY_LOSSES)} (loss.name={cfg.loss.name!r} is a "
                              f"segmentation loss), e.g. configs/ecssd/pfa_vgg16.yaml")
    model = build_model_for(cfg, 1 if sod else train_set.num_classes)
    loss = build_loss_for(cfg, train_set, progress=progress)
    batch_transform = build_batch_mix(cfg.data, ignore_index=train_set.ignore_index)
    device = dist_utils.device_for(cfg.device)
    evaluate_fn = None
    if val_set is not None:
        loader = eval_loader(val_set, cfg, rank, world)

        def evaluate_fn(model):
            if sod:
                return saliency.evaluate_saliency(model, loader, device, cfg.train.amp, cfg.train.channels_last,
                                                  progress, distributed=world > 1)
            return evaluate(model, loader, val_set.num_classes, val_set.classes, val_set.ignore_index, device,
                            cfg.train.amp, cfg.train.channels_last, progress, distributed=world > 1)

    meta = {"classes": list(train_set.classes), "palette": [tuple(c) for c in train_set.palette]}
    trainer = Trainer(cfg, model, loss, train_set, evaluate_fn, meta=meta, progress=progress,
                      batch_transform=batch_transform, key_metric=saliency.KEY_METRIC if sod else "mIoU")
    summary = trainer.fit(resume=resume, stop_at=stop_at)
    if rank == 0 and summary.get("final", {}).get("per_class_iou"):
        print(format_table(summary["final"]))
    if rank == 0 and sod and summary.get("final"):
        print(saliency.format_saliency(summary["final"]))
    return summary


def calibration_batches(cfg: Config, count: int = 16) -> list:
    """``count`` training images (evenly spaced, whole, normalised as for evaluation) that calibrate int8
    quantisation: from the training split, so the evaluated split stays unseen."""
    images = build_dataset(cfg.data.dataset, cfg.data.train_split, root=cfg.data.root, transform=eval_transform(),
                           **dict(cfg.data.kwargs))
    step = max(1, len(images) // count)
    return [images[i][0].unsqueeze(0) for i in range(0, len(images), step)[:count]]


def evaluate_checkpoint(cfg: Config, checkpoint, split: str | None = None, progress: bool = True,
                        out: str | None = None, scales=None, merge: str | None = None, flip: bool = False,
                        window=None, stride=None, backend: str | None = None) -> dict:
    """Evaluate a checkpoint, or an ensemble of several (a list of paths: their softmax probabilities averaged,
    see contextseg.models.ensemble), on cfg's validation split (or `split`); prints the per-class table.

    scales / merge / flip / window / stride are test-time options (``contextseg.models.multiscale.
    configure_inference``), applied to every member: e.g. scales=[0.5, 1.0, 1.5], merge="avg", flip=True; none
    given = as trained. backend: see ``contextseg.engine.backends.prepare`` (None: bf16 eager where native, else
    the exact torch backend; "auto": the fastest exact backend; an ensemble runs eager)."""
    checkpoints = [str(checkpoint)] if isinstance(checkpoint, (str, Path)) else [str(c) for c in checkpoint]
    if not checkpoints:
        raise ContextSegError("no checkpoint given; pass --checkpoint A.pt [B.pt ...]")
    if classification.is_classification_config(cfg):
        return classification.evaluate_classification_checkpoint(
            cfg, checkpoints, split, progress, out, scales=scales, merge=merge, flip=flip, window=window, stride=stride)
    if weak.is_weak_config(cfg):
        return weak.evaluate_weak_checkpoint(cfg, checkpoints, split, progress, out, scales=scales, merge=merge,
                                             flip=flip, window=window, stride=stride)
    if split:
        cfg.data.val_split = split
    _, val_set = build_datasets(cfg, train=False)
    if val_set is None:
        raise ContextSegError("no split to evaluate: set data.val_split or pass --split")
    if is_saliency(val_set) and len(checkpoints) > 1:
        raise ContextSegError("ensembles average softmax probabilities of segmentation models; evaluate saliency "
                              "checkpoints one at a time")
    models = [configure_inference(load_for_eval(cfg, c, val_set), scales=scales, merge=merge, flip=flip,
                                  window=window, stride=stride) for c in checkpoints]
    model = models[0] if len(models) == 1 else Ensemble(models, names=checkpoints)
    device = select_device(cfg.device)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = eval_loader(val_set, cfg)
    amp = cfg.train.amp
    backend = backend or default_backend(amp, device)
    if backend != "eager" and len(models) == 1 and getattr(model, "session", None) is None:  # not an ensemble/.onnx
        calibration = calibration_batches(cfg) if backend == "int8" else None
        model, amp = prepare(model, backend, next(iter(loader))[0].to(device), amp, device, calibration)
    used = getattr(model, "backend", "eager")
    if progress:
        print(f"inference: backend {used}" + (f", amp {amp}" if used == "eager" else ""))
    if is_saliency(val_set):
        result = saliency.evaluate_saliency(model, loader, device, amp, cfg.train.channels_last, progress)
        print(saliency.format_saliency(result))
    else:
        result = evaluate(model, loader, val_set.num_classes, val_set.classes, val_set.ignore_index, device, amp,
                          cfg.train.channels_last, progress)
        print(format_table(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        report = {"checkpoint": checkpoints[0] if len(checkpoints) == 1 else checkpoints,
                  "split": cfg.data.val_split, "inference": inference_spec(models[0]), "backend": used, **result}
        if len(checkpoints) > 1:
            report["ensemble"] = "mean of softmax probabilities"
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    return result
