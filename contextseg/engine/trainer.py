"""Iteration-based trainer: SGD/AdamW, poly schedule with warm-up, autocast, gradient accumulation and clipping,
periodic evaluation, atomic best/last checkpoints, exact resume, JSON-lines metrics and a PNG of the curves.
Task-agnostic: it needs a model returning a dict, a loss `(outputs, targets) -> (total, parts)` and an
`evaluate_fn(model) -> dict` whose `key_metric` entry decides "best"; an optional
`batch_transform(images, targets) -> (images, targets)` (a batch mix) runs on each batch on the device.

Distributed (a process group from torchrun, see engine/distributed.py): the model is wrapped in
DistributedDataParallel (BatchNorm converted to SyncBatchNorm on CUDA; it has no CPU kernels), each rank reads its
shard of the same seeded permutation with ``data.batch_size`` samples per step (global batch = world size x
batch_size x train.accumulate), the logged losses are means over ranks, and only rank 0 writes files.

Exact resume: a checkpoint holds model, optimizer, scheduler, grad scaler, step and the RNG states (of every
rank); the data position follows from the step, the sample order from (seed, epoch) and each sample's augmentation
from (seed, epoch, index) (runtime.SeededSamples), so a run killed at any moment and resumed from last.pt ends
where an uninterrupted run ends. On resume, metrics.jsonl records written after that checkpoint are dropped.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import Config, save_config
from ..errors import ContextSegError, Interrupted
from ..models.resize import align_corners_of, set_align_corners
from ..visualize import plot_curves
from . import distributed as dist_utils
from .diagnostics.common import snapshot_params, update_stats
from .checkpointer import Checkpointer
from .hardware import cpu_label
from .runtime import (ResumableSampler, SeededSamples, autocast, jsonable, loader_workers, precision_choice, seed_rank,
                      worker_init, write_json)
from .schedules import PolyLR


MAX_BAD_STEPS = 5  # non-finite losses in a row that stop a run
_PRECISION_NAMES = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast + loss scaling"}


def param_groups(model: torch.nn.Module, lr: float) -> list[dict]:
    """The trainable parameters at ``lr``, except those of modules with an ``lr_mult`` attribute (e.g. a spatial
    transformer's localisation net, 0.1), which get ``lr * lr_mult``; the plain group first (its rate is logged)."""
    mult = {}
    for module in model.modules():
        if getattr(module, "lr_mult", 1.0) != 1.0:
            mult.update({id(p): float(module.lr_mult) for p in module.parameters()})
    groups: dict[float, list] = {1.0: []}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault(mult.get(id(p), 1.0), []).append(p)
    return [{"params": ps, "lr": lr * m} for m, ps in groups.items() if ps or m == 1.0]


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over ``param_groups``, with torch's fused kernel (one pass over all parameters)
    where the parameters' device has one (CPU, CUDA): AdamW's step on the demo model 19 -> 4 ms on a Zen 3 core
    pair, SGD's 8 -> 2 ms (docs/speed.md). The same update rule, rounded in another order."""
    groups = param_groups(model, cfg.lr)
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = {"fused": True} if devices and devices <= {"cpu", "cuda"} else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


class Trainer:
    def __init__(self, cfg: Config, model, loss_fn, train_set, evaluate_fn=None, meta: dict | None = None,
                 key_metric: str = "mIoU", progress: bool = True, batch_transform=None):
        self.cfg = cfg
        t = cfg.train
        self.rank, self.world = dist_utils.get_rank(), dist_utils.get_world_size()
        self.is_main = self.rank == 0
        self.device = dist_utils.device_for(cfg.device)
        if self.world > 1 and self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)  # the plain module: checkpoints, evaluation
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_model = self.model  # what the training step calls: the DDP wrapper in a distributed run
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(getattr(t, "find_unused_parameters", False)))
            # the same initial weights on every rank (DDP broadcast rank 0's), but distinct streams for
            # dropout and batch mixes
            if self.rank:
                seed_rank(cfg.seed, self.rank)
        self.eager_train_model = self.train_model
        if getattr(t, "compile", False):  # compiled on the first step; checkpoints keep using self.model
            self.train_model = torch.compile(self.train_model)
        # losses resize logits to the labels as the model resizes inside (models/resize.py)
        self.loss_fn = set_align_corners(loss_fn, align_corners_of(model)).to(self.device)
        self.train_set = train_set
        self.evaluate_fn = evaluate_fn
        self.meta = meta or {}
        self.key_metric = key_metric
        self.progress = progress and self.is_main
        # (images, labels) -> (images, labels) on the device, e.g. a batch mix (contextseg.data.mix.BatchMix)
        self.batch_transform = batch_transform
        self.out_dir = Path(cfg.output_dir)
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = PolyLR(self.optimizer, t.iters, t.poly_power, t.warmup_iters, t.warmup_ratio, t.min_lr)
        self.accumulate = int(getattr(t, "accumulate", 1) or 1)
        if len(train_set) // self.world < cfg.data.batch_size:
            per = f" ({self.world} processes share them)" if self.world > 1 else ""
            raise ContextSegError(f"the training set has {len(train_set)} samples{per}, fewer than "
                                  f"data.batch_size={cfg.data.batch_size} per process; lower data.batch_size")
        self.samples = SeededSamples(train_set, seed=cfg.seed)
        self.sampler = ResumableSampler(len(train_set), seed=cfg.seed, rank=self.rank, num_replicas=self.world)
        self.loader = DataLoader(self.samples, batch_size=cfg.data.batch_size, sampler=self.sampler,
                                 num_workers=loader_workers(cfg.data.num_workers, self.device), drop_last=True, worker_init_fn=worker_init,
                                 persistent_workers=False, pin_memory=self.device.type == "cuda")
        self.batches_per_epoch = self.sampler.shard_size // cfg.data.batch_size  # per process
        # the precision train.amp resolves to on this device (auto: bf16 only where native), with its reason
        self.amp, self.amp_reason = precision_choice(t.amp, self.device)
        # fp16 needs loss scaling (bf16 does not); a disabled scaler is a no-op
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.step = 0
        self.epoch = 0
        self.best = -math.inf
        self.last_metrics: dict = {}
        self.bad_gradients = False  # the last step was skipped for non-finite gradients (not the loss)
        self.checkpointer = Checkpointer(cfg, self.model, self.optimizer, self.scheduler, self.scaler, self.meta)

    # -- checkpoints (checkpointer.py) -------------------------------------------------------
    def progress_state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "best": self.best, "metrics": self.last_metrics}

    def save(self, name: str) -> Path:
        """Write OUTPUT_DIR/name atomically (rank 0; every rank must call it)."""
        return self.checkpointer.save(name, self.progress_state())

    def resume(self, path) -> None:
        progress = self.checkpointer.resume(path, self.device)
        self.step, self.epoch, self.best = progress["step"], progress["epoch"], progress["best"]
        self.last_metrics = progress["metrics"]
        if self.is_main:
            _truncate_log(self.out_dir / "metrics.jsonl", self.step)

    # -- loop --------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(jsonable(record)) + "\n")

    def run_eval(self) -> dict:
        if self.evaluate_fn is None:
            return {}
        t0 = time.time()
        metrics = self.evaluate_fn(self.model)
        metrics["eval_seconds"] = time.time() - t0
        self.last_metrics = metrics
        self.log({"kind": "val", "step": self.step, "epoch": self.epoch, **metrics})
        value = metrics.get(self.key_metric, -math.inf)
        if value > self.best:
            self.best = value
            self.save("best.pt")  # before last.pt: a kill in between resumes from the older last.pt and redoes it
        self.save("last.pt")
        return metrics

    def batches(self):
        """Endless stream of (epoch, (images, targets)) from the position reached after ``self.step`` optimizer
        steps: per epoch, the sampler's order from that position, each sample augmented by its own seed."""
        bs = self.cfg.data.batch_size
        epoch, offset = divmod(self.step * self.accumulate, self.batches_per_epoch)
        while True:
            self.sampler.set_epoch(epoch, start=offset * bs)
            self.samples.set_epoch(epoch)
            # the loader draws its worker seed from this generator, not from the global RNG, so a resumed run
            # leaves the global RNG (dropout, batch mixes) where an uninterrupted run has it
            self.loader.generator = torch.Generator().manual_seed(self.cfg.seed * 1000003 + epoch)
            for batch in self.loader:
                yield epoch, batch
            epoch, offset = epoch + 1, 0

    def train_step(self, batches) -> tuple[dict, bool]:
        """One optimizer step over ``train.accumulate`` batches; returns the losses (means over batches and ranks,
        as 0-dim tensors) and whether the step was taken (False: a loss was not finite on some rank)."""
        t = self.cfg.train
        self.optimizer.zero_grad(set_to_none=True)
        finite, sums = True, None
        self.bad_gradients = False
        for j in range(self.accumulate):
            self.epoch, (images, labels) = next(batches)
            images = images.to(self.device, non_blocking=True)
            labels = _to_device(labels, self.device)  # a tensor, or a dict of them (SSNet's joint targets)
            if self.batch_transform is not None:
                images, labels = self.batch_transform(images, labels)
            if t.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            sync = j == self.accumulate - 1 or self.world == 1
            with contextlib.nullcontext() if sync else self.train_model.no_sync():
                with autocast(self.device, self.amp):
                    try:
                        outputs = self.train_model(images)
                    except RuntimeError as exc:
                        if "finished reduction in the prior iteration" not in str(exc):
                            raise
                        raise ContextSegError(
                            "some model parameters got no gradient in the previous step (an output the loss does "
                            "not use, e.g. aux left out of loss.weights); DistributedDataParallel needs "
                            "train.find_unused_parameters=true for such a model, or give that output a loss "
                            "weight") from None
                loss, parts = self.loss_fn(float32_outputs(outputs), labels)
                names = ["loss", *(f"loss_{k}" for k in parts)]
                values = torch.stack([loss.detach().float(), *(torch.as_tensor(v, device=loss.device).detach().float()
                                                               for v in parts.values())])
                stats = torch.cat([values, (~torch.isfinite(loss.detach())).float().view(1)])
                dist_utils.all_reduce_sum(stats)  # the same decision on every rank
                finite = finite and stats[-1].item() == 0
                if finite:
                    self.scaler.scale(loss / self.accumulate).backward()
            sums = stats[:-1] if sums is None else sums + stats[:-1]
        losses = dict(zip(names, sums / (self.world * self.accumulate)))
        logging_step = (self.step + 1) % t.log_interval == 0 or self.step + 1 == t.iters
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = None
        if finite and params and not self.scaler.is_enabled():  # fp16's scaler skips non-finite gradients itself
            # a finite loss can still give non-finite gradients (e.g. a bf16 backward); one such update would make
            # every later loss NaN, so the step is skipped as a non-finite loss is (the same on every rank: the
            # gradients are already all-reduced). The norm computed here is the one clipping uses.
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            finite = bool(torch.isfinite(norm))
            self.bad_gradients = not finite
        self._old_params = snapshot_params(self.model) if self.is_main and finite and logging_step else None
        if finite:
            if t.grad_clip and norm is not None:
                torch.nn.utils.clip_grads_with_norm_(params, t.grad_clip, norm)
            elif t.grad_clip:  # fp16: unscale first, then clip (the scaler skips non-finite steps)
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return losses, finite

    def _compiled_step(self, batches) -> tuple[dict, bool]:
        """The first step of a compiled run: a torch.compile failure (inductor bugs differ by CPU; the backward
        compiles at the first backward) falls back to eager with a warning, and the step is taken again eager
        on the next batch."""
        try:
            return self.train_step(batches)
        except ContextSegError:
            raise
        except Exception as exc:  # inductor/dynamo errors have many types
            if self.is_main:
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                warnings.warn(f"train.compile: torch.compile failed on this machine ({exc.__class__.__name__}: "
                              f"{first}); training continues eager (one batch was used by the failed attempt). "
                              f"Set train.compile=false to skip the attempt", stacklevel=2)
            self.train_model = self.eager_train_model
            return self.train_step(batches)

    def fit(self, resume: str | Path | None = None, stop_at: int | None = None) -> dict:
        """Train to cfg.train.iters (or pause after step `stop_at`, writing last.pt, for time-boxed runs)."""
        cfg, t = self.cfg, self.cfg.train
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
        if resume:
            self.resume(resume)
        elif self.step == 0 and self.is_main:  # a fresh run owns its log: drop an earlier run's records
            _truncate_log(self.out_dir / "metrics.jsonl", 0)
        self.model.train()
        if self.is_main:
            print(f"precision: {_PRECISION_NAMES[self.amp]} ({self.amp_reason})", flush=True)
        bar = tqdm(total=t.iters, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        start_time = time.time()
        start_step = self.step
        bad_steps = 0
        batches = self.batches()
        interrupt = StopOnInterrupt(enabled=self.world == 1)
        try:
            while self.step < t.iters and (stop_at is None or self.step < stop_at):
                if interrupt.requested:  # Ctrl-C: stop between steps with a checkpoint of this step
                    path = self.save("last.pt")
                    raise Interrupted(f"interrupted at step {self.step} of {t.iters}: saved {path}; continue with "
                                      f"the same command and --resume {path}")
                compiled = self.train_model is not self.eager_train_model and self.step == start_step
                losses, took = self._compiled_step(batches) if compiled else self.train_step(batches)
                if took:
                    bad_steps = 0
                else:
                    bad_steps += 1
                    what = "gradients" if self.bad_gradients else f"loss {losses['loss'].item()}"
                    if self.is_main:
                        warnings.warn(f"step {self.step}: non-finite {what}, update skipped")
                    if bad_steps >= MAX_BAD_STEPS:
                        raise ContextSegError(
                            f"the loss or its gradients were not finite {MAX_BAD_STEPS} steps in a row (last at step "
                            f"{self.step}, {'gradients' if self.bad_gradients else 'loss'}); "
                            f"lower train.lr, set train.grad_clip, use amp=none, or run `contextseg doctor` on the "
                            f"config. Checkpoints hold only finite weights: resume from OUTPUT_DIR/last.pt")
                self.scheduler.step()
                self.step += 1
                bar.update(1)
                if self.step % t.log_interval == 0 or self.step == t.iters:
                    loss = losses["loss"].item()
                    record = {"kind": "train", "step": self.step, "epoch": self.epoch, "loss": loss,
                              "lr": self.optimizer.param_groups[0]["lr"], "time": time.time() - start_time}
                    record.update({k: v.item() for k, v in losses.items() if k != "loss"})
                    if self._old_params is not None:  # gradient norms and update-to-weight ratios per group
                        record.update(update_stats(self.model, self._old_params))
                    self.log(record)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}")
                last = self.step == t.iters
                if self.evaluate_fn is not None and (self.step % t.eval_interval == 0 or last):
                    m = self.run_eval()
                    if self.is_main:
                        bar.write(f"step {self.step}: val {self.key_metric} "
                                  f"{100 * m.get(self.key_metric, float('nan')):.2f}")
                elif self.step % t.checkpoint_interval == 0 or last:
                    self.save("last.pt")
                elif stop_at is not None and self.step >= stop_at:
                    self.save("last.pt")
        finally:
            interrupt.restore()
            batches.close()  # ends the loader iterator (and its workers)
            bar.close()
        if self.step == start_step and self.evaluate_fn is None:
            if dist_utils.broadcast_object(not (self.out_dir / "last.pt").exists() if self.is_main else None):
                self.save("last.pt")
        summary = {"step": self.step, "steps_this_session": self.step - start_step, "best": self.best,
                   "key_metric": self.key_metric, "train_seconds": time.time() - start_time, "final": self.last_metrics,
                   "precision": {"amp": self.amp, "reason": self.amp_reason},
                   "device": _device_label(self.device)}
        if self.is_main:
            if (self.out_dir / "metrics.jsonl").exists():
                plot_curves(self.out_dir / "metrics.jsonl", self.out_dir / "curves.png", self.key_metric)
            write_json(self.out_dir / "summary.json", summary)
        dist_utils.barrier()
        return summary


class StopOnInterrupt:
    """SIGINT (Ctrl-C) during training: the first one asks the loop to stop after the current step (it then saves
    last.pt and raises Interrupted); a second one stops at once. Only in a single-process run's main thread (a
    distributed run keeps the default: torchrun stops every rank)."""

    def __init__(self, enabled: bool = True):
        self.requested = False
        self.previous = None
        if enabled and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: stopping after this step and saving last.pt (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


def _device_label(device: torch.device) -> str:
    """The device a run trained on, as figures name it: the CPU's model and instruction sets, the GPU's name."""
    if device.type == "cpu":
        return cpu_label()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return str(device)  # e.g. mps: no name to ask for, and a finished run must not fail on its summary


def float32_outputs(x):
    """The model's half-precision outputs (a tensor, or a dict / list / tuple of them) cast to float32, others as
    they are. The loss runs outside autocast: without this a bf16 or fp16 output would have its softmax, log and
    reductions computed in half precision (CUDA autocast would run them in float32; here that is explicit)."""
    if isinstance(x, dict):
        return {k: float32_outputs(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(float32_outputs(v) for v in x)
    if isinstance(x, torch.Tensor) and x.dtype in (torch.bfloat16, torch.float16):
        return x.float()
    return x


def _to_device(x, device):
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x.to(device, non_blocking=True)


def _truncate_log(path: Path, step: int) -> None:
    """Keep the complete JSON lines of ``path`` with step <= ``step``: what a run killed after writing the
    checkpoint of ``step`` logged later (and a half-written last line) is redone by the resumed run."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            continue
        kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)
