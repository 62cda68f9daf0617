"""Iteration-based trainer: SGD/AdamW, poly schedule with warm-up, autocast, periodic evaluation,
atomic best/last checkpoints, exact resume of step/epoch/sampler/RNG, JSON-lines metrics and a PNG
of the curves. Task-agnostic: it needs a model returning a dict, a loss `(outputs, targets) ->
(total, parts)` and an `evaluate_fn(model) -> dict` whose `key_metric` entry decides "best"; an optional
`batch_transform(images, targets) -> (images, targets)` (a batch mix) runs on each batch on the device.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import Config, save_config
from ..errors import ContextSegError
from ..visualize import plot_curves
from .checkpoint import atomic_save, load_checkpoint, load_state_dict_checked, rng_state, set_rng_state
from .runtime import ResumableSampler, autocast, select_device, worker_init
from .schedules import PolyLR


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Trainer:
    def __init__(self, cfg: Config, model, loss_fn, train_set, evaluate_fn=None, meta: dict | None = None,
                 key_metric: str = "mIoU", progress: bool = True, batch_transform=None):
        self.cfg = cfg
        self.device = select_device(cfg.device)
        self.model = model.to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = loss_fn.to(self.device)
        self.train_set = train_set
        self.evaluate_fn = evaluate_fn
        self.meta = meta or {}
        self.key_metric = key_metric
        self.progress = progress
        # (images, labels) -> (images, labels) on the device, e.g. a batch mix (contextseg.data.mix.BatchMix)
        self.batch_transform = batch_transform
        self.out_dir = Path(cfg.output_dir)
        self.optimizer = build_optimizer(self.model, cfg.train)
        t = cfg.train
        self.scheduler = PolyLR(self.optimizer, t.iters, t.poly_power, t.warmup_iters, t.warmup_ratio, t.min_lr)
        if len(train_set) < cfg.data.batch_size:
            raise ContextSegError(f"the training set has {len(train_set)} samples, fewer than "
                                  f"data.batch_size={cfg.data.batch_size}; lower data.batch_size")
        self.sampler = ResumableSampler(len(train_set), seed=cfg.seed)
        self.loader = DataLoader(train_set, batch_size=cfg.data.batch_size, sampler=self.sampler,
                                 num_workers=cfg.data.num_workers, drop_last=True, worker_init_fn=worker_init,
                                 persistent_workers=False, pin_memory=self.device.type == "cuda")
        self.batches_per_epoch = len(train_set) // cfg.data.batch_size
        # fp16 needs loss scaling (bf16 does not); a disabled scaler is a no-op
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        self.step = 0
        self.epoch = 0
        self.best = -math.inf
        self.last_metrics: dict = {}

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "format": "contextseg-checkpoint-v1",
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "model_args": dict(getattr(self.model, "init_args", {})),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "config": self.cfg.to_dict(),
            "metrics": _jsonable(self.last_metrics),
            "rng": rng_state(),
            "classes": self.meta.get("classes"),
            "palette": [list(c) for c in self.meta.get("palette", [])] or None,
        }

    def save(self, name: str) -> Path:
        for k, v in self.model.state_dict().items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise ContextSegError(f"refusing to write {name}: weight {k} is not finite; lower train.lr")
        path = self.out_dir / name
        atomic_save(self.state(), path)
        return path

    def resume(self, path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        load_state_dict_checked(self.model, ckpt["model"], source=f"checkpoint {str(path)!r}")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]
        self.best = ckpt.get("best", -math.inf)
        self.last_metrics = ckpt.get("metrics") or {}
        set_rng_state(ckpt["rng"])

    # -- loop --------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

    def run_eval(self) -> dict:
        if self.evaluate_fn is None:
            return {}
        t0 = time.time()
        metrics = self.evaluate_fn(self.model)
        metrics["eval_seconds"] = time.time() - t0
        self.last_metrics = metrics
        self.log({"kind": "val", "step": self.step, "epoch": self.epoch, **metrics})
        value = metrics.get(self.key_metric, -math.inf)
        improved = value > self.best
        if improved:
            self.best = value
        self.save("last.pt")
        if improved:
            self.save("best.pt")
        return metrics

    def fit(self, resume: str | Path | None = None, stop_at: int | None = None) -> dict:
        """Train to cfg.train.iters (or pause after step `stop_at`, writing last.pt, for time-boxed runs)."""
        cfg, t = self.cfg, self.cfg.train
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out_dir / "config.yaml")
        if resume:
            self.resume(resume)
        self.model.train()
        bar = tqdm(total=t.iters, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        start_time = time.time()
        bad_steps = 0
        while self.step < t.iters and (stop_at is None or self.step < stop_at):
            in_epoch = self.step - self.epoch * self.batches_per_epoch
            if in_epoch >= self.batches_per_epoch:
                self.epoch += 1
                in_epoch = 0
            self.sampler.set_epoch(self.epoch, start=in_epoch * cfg.data.batch_size)
            # the loader draws its worker seed from this generator, not from the global RNG, so a
            # resumed run leaves the global RNG (dropout, augmentation) where an uninterrupted run has it
            self.loader.generator = torch.Generator().manual_seed(cfg.seed * 1000003 + self.epoch)
            for images, labels in self.loader:
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                if self.batch_transform is not None:
                    images, labels = self.batch_transform(images, labels)
                if t.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast(self.device, t.amp):
                    outputs = self.model(images)
                loss, parts = self.loss_fn(outputs, labels)
                self.optimizer.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    bad_steps += 1
                    warnings.warn(f"step {self.step}: non-finite loss {loss.item()}, update skipped")
                    if bad_steps >= 5:
                        raise ContextSegError("the loss was not finite 5 steps in a row; lower train.lr, "
                                              "use amp=none, or run `contextseg doctor` on the config")
                else:
                    bad_steps = 0
                    self.scaler.scale(loss).backward()
                    if t.grad_clip:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                self.scheduler.step()
                self.step += 1
                bar.update(1)
                if self.step % t.log_interval == 0 or self.step == t.iters:
                    record = {"kind": "train", "step": self.step, "epoch": self.epoch, "loss": loss.item(),
                              "lr": self.optimizer.param_groups[0]["lr"], "time": time.time() - start_time}
                    record.update({f"loss_{k}": v.item() for k, v in parts.items()})
                    self.log(record)
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{record['lr']:.2e}")
                last = self.step == t.iters
                if self.evaluate_fn is not None and (self.step % t.eval_interval == 0 or last):
                    m = self.run_eval()
                    bar.write(f"step {self.step}: val {self.key_metric} {100 * m.get(self.key_metric, float('nan')):.2f}")
                elif self.step % t.checkpoint_interval == 0 or last:
                    self.save("last.pt")
                if stop_at is not None and self.step >= stop_at and not last:
                    self.save("last.pt")
                    break
                if last or self.step - self.epoch * self.batches_per_epoch >= self.batches_per_epoch:
                    break
        bar.close()
        if self.evaluate_fn is None and not (self.out_dir / "last.pt").exists():
            self.save("last.pt")
        if (self.out_dir / "metrics.jsonl").exists():
            plot_curves(self.out_dir / "metrics.jsonl", self.out_dir / "curves.png")
        summary = {"step": self.step, "best": self.best, "train_seconds": time.time() - start_time,
                   "final": self.last_metrics}
        with open(self.out_dir / "summary.json", "w") as f:
            json.dump(_jsonable(summary), f, indent=2)
        return summary


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
