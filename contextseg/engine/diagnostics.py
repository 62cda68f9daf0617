"""Babysitting checks (`contextseg doctor CONFIG`): quick tests that a model, its loss, its optimiser settings and
its data are sane before a long run. Each check returns a dict with a ``verdict`` (PASS / WARN / FAIL), a one-line
``summary``, the numbers behind it and the paths of its ``plots``; ``run_doctor`` runs a selection for a Config,
prints them and writes ``OUT/doctor.json``.

    init       CE at initialisation vs ln(K) over the labelled (non-ignored) pixels (Karpathy, "A Recipe for Training
               Neural Networks", 2019: "verify loss @ init"): a fresh classifier predicts about uniform probabilities.
    overfit    one small fixed batch (no augmentation) driven to near-zero loss in a bounded number of steps.
    lr         learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", Sec. 3.3;
               fastai's lr_find): the lr grows exponentially from lr_min to lr_max, one batch per step; stops when the
               smoothed loss exceeds 4x its minimum. Suggested lr = (lr at the smoothed minimum) / 10, the rule of
               fastai v1's lr_find plot; the steepest descent of the smoothed loss (d loss / d log lr) is reported too.
               The model's initial weights are restored afterwards.
    ratios     update-to-weight ratio ||w_{t+1} - w_t|| / ||w_t|| per parameter group (backbone stages, head parts)
               over a few steps of the configured optimiser at the configured lr (about 1e-3 is healthy; WARN
               below 1e-4 or above 1e-2), and per stage the ReLU outputs' zero share, dead channels (zero for
               every pixel of the batch) and activation mean / std (forward hooks).
    gradcheck  torch.autograd.gradcheck in float64 of our own modules on tiny inputs, parameters included: the OCR
               gather (SpatialGather) and distribution (ObjectAttentionBlock, SpatialOCR; eval mode, so BN is affine
               and dropout off), SEBlock, NonLocal2d, the multi-scale merges (MultiScale avg / max / attention /
               hierarchical on a toy model) and hierarchical_weights.
    data       per-class pixel shares of the raw labels, images with only ignore pixels, label values outside the
               classes and unreadable pairs (named by file), and a bar chart of the shares.

All training-dynamics checks run in float32 without autocast and start from copies of the same initial model.

During training, ``update_stats(model, old_params)`` (with ``snapshot_params`` taken before the optimiser step) gives
the same update ratios and gradient norms for the metrics log.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ContextSegError

CHECKS = ("init", "overfit", "lr", "ratios", "gradcheck", "data")
PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
_ORDER = {PASS: 0, WARN: 1, FAIL: 2}
STEM_NAMES = {"conv1", "bn1", "conv2", "bn2", "relu", "stem", "maxpool"}


def worst(verdicts: Iterable[str]) -> str:
    return max(verdicts, key=lambda v: _ORDER[v], default=PASS)


# ----------------------------------------------------------------------------- parameter groups and update stats


def _strip_wrappers(name: str) -> list[str]:
    parts = name.split(".")
    while parts and parts[0] in ("module", "model", "_orig_mod"):
        parts = parts[1:]
    return parts


def group_name(name: str) -> str:
    """Parameter / module name -> its group: the top-level module of the backbone or head ("backbone.stage2",
    "head.cls_head"); the stem layers form "backbone.stem". DDP's "module." and MultiScale's "model." are dropped."""
    parts = _strip_wrappers(name)
    if len(parts) < 2:
        return parts[0] if parts else name
    if parts[0] == "backbone" and parts[1] in STEM_NAMES:
        return "backbone.stem"
    return ".".join(parts[:2])


def snapshot_params(model: nn.Module) -> dict[str, Tensor]:
    """Copies of the trainable parameters, taken just before ``optimizer.step()`` for ``update_stats``."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def update_stats(model: nn.Module, old_params: dict[str, Tensor]) -> dict[str, float]:
    """Update-to-weight ratios and gradient norms after an optimiser step, for the training log.

    old_params: ``snapshot_params(model)`` from before the step (gradients are read from ``p.grad``, which
    ``GradScaler.step`` has unscaled). Returns {"grad_norm", "update_ratio", "update_ratio/<group>",
    "grad_norm/<group>"}: ratio = ||w_new - w_old|| / ||w_old|| over the group's parameters (None when ||w_old|| = 0),
    grad_norm = the L2 norm of the group's gradients; groups as ``group_name``.
    """
    sums: dict[str, list[Tensor]] = {}
    for name, p in model.named_parameters():
        old = old_params.get(name)
        if old is None:
            continue
        g = group_name(name)
        delta = (p.detach().float() - old.float()).pow(2).sum()
        weight = old.float().pow(2).sum()
        grad = p.grad.detach().float().pow(2).sum() if p.grad is not None else torch.zeros((), device=p.device)
        acc = sums.setdefault(g, [torch.zeros((), device=p.device) for _ in range(3)])
        acc[0] += delta
        acc[1] += weight
        acc[2] += grad
    if not sums:
        return {}
    names = list(sums)
    values = torch.stack([torch.stack(sums[g]).cpu() for g in names]).double().numpy()  # one sync
    out: dict[str, float] = {}
    total = values.sum(0)
    out["grad_norm"] = float(math.sqrt(total[2]))
    out["update_ratio"] = float(math.sqrt(total[0] / total[1])) if total[1] > 0 else None
    for g, (d, w, gr) in zip(names, values):
        out[f"update_ratio/{g}"] = float(math.sqrt(d / w)) if w > 0 else None
        out[f"grad_norm/{g}"] = float(math.sqrt(gr))
    return out


# ----------------------------------------------------------------------------- helpers


def _outputs(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    out = model(images)
    return out if isinstance(out, dict) else {"out": out}


def _class_outputs(outputs: dict[str, Tensor], num_classes: int) -> dict[str, Tensor]:
    """The outputs that are K-channel logit maps ("out", "aux", "out_s0.5", ...)."""
    return {k: v for k, v in outputs.items() if v.dim() == 4 and v.shape[1] == num_classes and k != "scale_weights"}


def _ce(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def fixed_crop_transform(crop_size: Sequence[int]):
    """No augmentation: pad (ignore label, mean colour) and centre-crop to crop_size, then normalise."""
    import albumentations as A
    import cv2

    from ..data.transforms import MEAN, STD, SegTransform

    h, w = int(crop_size[0]), int(crop_size[1])
    return SegTransform([
        A.PadIfNeeded(min_height=h, min_width=w, position="center", border_mode=cv2.BORDER_CONSTANT,
                      fill=tuple(m * 255.0 for m in MEAN), fill_mask=255),
        A.CenterCrop(height=h, width=w),
        A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0),
    ])


def fixed_batch(dataset, n: int, crop_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The first n samples of ``dataset`` (raw pairs), centre-cropped, no augmentation: (n, 3, H, W), (n, H, W)."""
    tf = fixed_crop_transform(crop_size)
    pairs = [tf(*dataset.raw(i)) for i in range(min(n, len(dataset)))]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def batch_stream(dataset, batch_size: int, seed: int = 0):
    """Endless shuffled (images, labels) batches of ``dataset`` (its own transform), single process."""
    from torch.utils.data import DataLoader

    batch_size = max(1, min(batch_size, len(dataset)))
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0, generator=g)
    while True:
        yield from loader


def _result(name: str, verdict: str, summary: str, **numbers) -> dict:
    return {"check": name, "verdict": verdict, "summary": summary, **numbers}


# ----------------------------------------------------------------------------- init loss


@torch.no_grad()
def check_init_loss(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
                    ignore_index: int = 255, tol: float = 0.1, classes: Sequence[str] | None = None,
                    device: torch.device | str = "cpu") -> dict:
    """Cross-entropy of a fresh model against ln(K), over the non-ignored pixels of ``batches`` (train mode, so BN
    uses batch statistics as in the first training steps; the model's BN buffers are restored afterwards).

    Verdict on the main output "out": |CE / ln K - 1| <= tol PASS, <= 3 tol WARN, else FAIL. Also reported: every
    K-channel output's CE, the best constant predictor's CE (the entropy of the labelled pixels' class shares: a
    model that predicts the class prior reaches it), the mean predicted probability per class and the logits' std.
    """
    expected = math.log(num_classes)
    state = copy.deepcopy(model.state_dict())
    model.train()
    sums: dict[str, float] = {}
    pixels = 0
    counts = torch.zeros(num_classes, dtype=torch.float64)
    mean_prob = torch.zeros(num_classes, dtype=torch.float64)
    logit_sq = logit_n = 0.0
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        valid = labels != ignore_index
        n = int(valid.sum())
        if n == 0:
            continue
        outs = _class_outputs(_outputs(model, images), num_classes)
        for k, v in outs.items():
            sums[k] = sums.get(k, 0.0) + float(_ce(v, labels, ignore_index)) * n
        main = outs["out"].float()
        up = F.interpolate(main, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        mean_prob += up.softmax(1).permute(0, 2, 3, 1)[valid].sum(0).double().cpu()
        logit_sq += float((main - main.mean(1, keepdim=True)).pow(2).sum())
        logit_n += main.numel()
        counts += torch.bincount(labels[valid].flatten().cpu(), minlength=num_classes)[:num_classes].double()
        pixels += n
    model.load_state_dict(state)
    if pixels == 0:
        return _result("init", WARN, "no labelled pixels in the batches: every pixel is the ignore index",
                       expected=expected, pixels=0)
    losses = {k: v / pixels for k, v in sums.items()}
    loss = losses["out"]
    share = counts / counts.sum()
    prior = float(-(share[share > 0] * share[share > 0].log()).sum())
    probs = (mean_prob / pixels).tolist()
    top = int(np.argmax(probs))
    names = list(classes) if classes is not None else [str(k) for k in range(num_classes)]
    rel = loss / expected - 1 if math.isfinite(loss) else float("inf")
    numbers = dict(loss=loss, expected=expected, relative_error=rel, tolerance=tol, losses=losses,
                   best_constant_loss=prior, mean_probability={names[k]: p for k, p in enumerate(probs)},
                   logit_std=math.sqrt(logit_sq / max(logit_n, 1)), pixels=pixels)
    verdict = PASS if abs(rel) <= tol else WARN if abs(rel) <= 3 * tol else FAIL
    msg = f"loss at init {loss:.3f} vs ln({num_classes}) = {expected:.3f} ({100 * rel:+.1f}%, tolerance {100 * tol:.0f}%)"
    if verdict != PASS:
        if not math.isfinite(loss) or rel > 0:
            cause = (f"the initial logits are too large or biased (logit std {numbers['logit_std']:.2f}, mean "
                     f"probability of {names[top]!r} {probs[top]:.2f} vs 1/K = {1 / num_classes:.2f}): check the "
                     f"classifier's init (small weights, zero bias), that the model outputs logits not "
                     f"probabilities, and the input normalisation")
        else:
            cause = (f"the loss is below ln(K) before training: the classifier predicts the class prior (a bias set to "
                     f"log class shares gives the best constant loss {prior:.3f}; fine if intended), or labels leak "
                     f"into the inputs")
        numbers["cause"] = cause
    return _result("init", verdict, msg, **numbers)


# ----------------------------------------------------------------------------- overfit one batch


def check_overfit(model: nn.Module, loss_fn: Callable, images: Tensor, labels: Tensor, steps: int = 100,
                  lr: float = 1e-3, threshold: float = 0.05, optimizer: torch.optim.Optimizer | None = None,
                  ignore_index: int = 255, out_dir: str | Path | None = None, progress: bool = False) -> dict:
    """Train on one fixed batch until the main output's CE is below ``threshold`` or ``steps`` run out.

    ``optimizer`` default Adam(lr). The loss minimised is ``loss_fn(outputs, labels)`` (the configured loss); the
    curve and the verdict use the main output's plain CE (ignore index respected). PASS: threshold reached;
    WARN: CE fell below half its start but not to the threshold (give more steps); FAIL: it did not.
    """
    from tqdm import tqdm

    model.train()
    opt = optimizer or torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    curve: list[float] = []
    reached = None
    for step in tqdm(range(1, steps + 1), desc="overfit", disable=not progress, leave=False, dynamic_ncols=True):
        outputs = _outputs(model, images)
        loss, _ = loss_fn(outputs, labels)
        ce = float(_ce(outputs["out"].detach(), labels, ignore_index))
        curve.append(ce)
        if not math.isfinite(loss.item()):
            break
        if ce < threshold:
            reached = step - 1  # steps taken before this forward
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = _outputs(model, images)["out"].float()
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        valid = labels != ignore_index
        accuracy = float((logits.argmax(1) == labels)[valid].float().mean()) if valid.any() else None
    final = curve[-1] if curve else float("nan")
    plots = []
    if out_dir is not None:
        from ..visualize import plot_loss_curve

        path = Path(out_dir) / "overfit_loss.png"
        plot_loss_curve([c if math.isfinite(c) else float("nan") for c in curve], path, threshold,
                        title=f"overfit {images.shape[0]} samples")
        plots.append(str(path))
    if reached is not None:
        verdict, msg = PASS, f"CE {curve[0]:.3f} -> {final:.4f} < {threshold:g} after {reached} steps"
    elif math.isfinite(final) and final < 0.5 * curve[0]:
        verdict, msg = WARN, (f"CE {curve[0]:.3f} -> {final:.4f} in {len(curve)} steps, not below {threshold:g}; "
                              f"it is falling: give more steps (--steps overfit=N)")
    else:
        verdict, msg = FAIL, (f"CE {curve[0]:.3f} -> {final:.4f} in {len(curve)} steps: the model cannot fit "
                              f"{images.shape[0]} images; look for a bug in the labels, the loss or the model wiring "
                              f"(or a too high / low lr)")
    return _result("overfit", verdict, msg, steps_to_threshold=reached, threshold=threshold, max_steps=steps,
                   initial_loss=curve[0] if curve else None, final_loss=final, pixel_accuracy=accuracy,
                   samples=int(images.shape[0]), curve=curve, plots=plots)


# ----------------------------------------------------------------------------- LR range test


def lr_range_test(model: nn.Module, loss_fn: Callable, batches: Iterable[tuple[Tensor, Tensor]],
                  optimizer: torch.optim.Optimizer, lr_min: float = 1e-6, lr_max: float = 1.0, steps: int = 60,
                  beta: float = 0.9, diverge: float = 4.0, configured_lr: float | None = None,
                  out_dir: str | Path | None = None, device: torch.device | str = "cpu", progress: bool = False) -> dict:
    """Smith's LR range test: lr_i = lr_min (lr_max / lr_min)^(i / (steps - 1)), one batch per step, loss smoothed
    by a bias-corrected exponential moving average (weight ``beta``); stops early when the smoothed loss exceeds
    ``diverge`` x its minimum or is not finite. The model's weights (and BN buffers) are restored afterwards.

    suggested_lr = lr at the smoothed minimum / 10 (fastai v1's rule; robust on short sweeps); steepest_lr = where
    the smoothed loss falls fastest per decade before the minimum (reported, not used for the verdict).
    Verdict: WARN when the loss never fell (min > 0.95 x start: sweep longer or wider), when the configured lr is
    above the lr of the minimum (expect divergence) or below suggested / 10 (slow); FAIL when the loss is not finite
    at the first step; else PASS.
    """
    from tqdm import tqdm

    if not 0 < lr_min < lr_max or steps < 2:
        raise ContextSegError(f"the lr range test needs 0 < lr_min < lr_max and >= 2 steps, got {lr_min}, {lr_max}, "
                              f"{steps}")
    state = copy.deepcopy(model.state_dict())
    model.train()
    gamma = (lr_max / lr_min) ** (1.0 / (steps - 1))
    lrs, losses, smoothed = [], [], []
    avg, best, stopped = 0.0, math.inf, None
    batches = iter(batches)
    for i in tqdm(range(steps), desc="lr range test", disable=not progress, leave=False, dynamic_ncols=True):
        lr = lr_min * gamma**i
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = next(batches)
        images, labels = images.to(device), labels.to(device)
        loss, _ = loss_fn(_outputs(model, images), labels)
        value = loss.item()
        if not math.isfinite(value):
            stopped = f"loss not finite at lr {lr:.2e}"
            break
        avg = beta * avg + (1 - beta) * value
        s = avg / (1 - beta ** (i + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(s)
        if s > diverge * best:
            stopped = f"smoothed loss {s:.3f} > {diverge:g} x minimum {best:.3f} at lr {lr:.2e}"
            break
        best = min(best, s)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    if not smoothed:
        return _result("lr", FAIL, f"the loss is not finite even at lr {lr_min:.1e}: {stopped}", lrs=[], losses=[],
                       smoothed=[], stopped=stopped, plots=[])
    k = int(np.argmin(smoothed))
    lr_at_min = lrs[k]
    suggested = lr_at_min / 10
    steepest = None
    start = max(1, len(smoothed) // 10)  # the EMA's first points lag
    if k - start >= 2:
        slope = np.gradient(np.asarray(smoothed[start:k + 1]), np.log10(lrs[start:k + 1]))
        steepest = float(lrs[start + int(np.argmin(slope))])
    plots = []
    if out_dir is not None:
        from ..visualize import plot_lr_finder

        path = Path(out_dir) / "lr_range_test.png"
        plot_lr_finder(lrs, losses, smoothed, path, suggested, steepest, configured_lr)
        plots.append(str(path))
    fell = smoothed[k] < 0.95 * smoothed[0]
    msg = f"suggested lr {suggested:.2e} (minimum of the smoothed loss {smoothed[k]:.3f} at lr {lr_at_min:.2e}, / 10)"
    verdict = PASS
    advice = None
    if not fell:
        verdict, advice = WARN, "the loss did not fall during the sweep; use more steps (--steps lr=N) or a wider range"
    elif configured_lr is not None and configured_lr > lr_at_min:
        verdict, advice = WARN, (f"the configured lr {configured_lr:.2e} is above the lr of the loss minimum: "
                                 f"training will likely diverge; try train.lr={suggested:.1e}")
    elif configured_lr is not None and configured_lr < suggested / 10:
        verdict, advice = WARN, (f"the configured lr {configured_lr:.2e} is far below the suggestion: training may be "
                                 f"slow; try train.lr={suggested:.1e}")
    if configured_lr is not None:
        msg += f"; configured {configured_lr:.2e}"
    return _result("lr", verdict, msg, suggested_lr=suggested, steepest_lr=steepest, lr_at_min=lr_at_min,
                   min_loss=smoothed[k], configured_lr=configured_lr, lr_min=lr_min, lr_max=lr_max,
                   steps_run=len(lrs), stopped=stopped, advice=advice, lrs=lrs, losses=losses, smoothed=smoothed,
                   plots=plots)


# ----------------------------------------------------------------------------- update ratios and activations


class ActivationStats:
    """Forward hooks on every nn.ReLU (zero share, dead channels, mean, std of its output) and on each group's top
    module (mean / std of its output), grouped by ``group_name``. Use as a context manager around forward passes."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.relu: dict[str, list[float]] = {}  # group -> [zeros, elements, dead channels, channels, sum, sumsq]
        self.out: dict[str, list[float]] = {}  # group -> [sum, sumsq, elements]
        self.handles = []

    def __enter__(self):
        for name, m in self.model.named_modules():
            if not name:
                continue
            g = group_name(name)
            if isinstance(m, nn.ReLU):
                self.handles.append(m.register_forward_hook(self._relu_hook(g)))
            elif len(_strip_wrappers(name)) == 2 and g == ".".join(_strip_wrappers(name)):  # a group's top module
                self.handles.append(m.register_forward_hook(self._out_hook(g)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _relu_hook(self, g):
        def hook(module, args, output):
            if not isinstance(output, Tensor) or output.dim() < 2:
                return
            y = output.detach().float()
            alive = (y > 0).transpose(0, 1).flatten(1).any(1)
            acc = self.relu.setdefault(g, [0.0] * 6)
            acc[0] += float((y == 0).sum())
            acc[1] += y.numel()
            acc[2] += float((~alive).sum())
            acc[3] += alive.numel()
            acc[4] += float(y.sum())
            acc[5] += float(y.pow(2).sum())
        return hook

    def _out_hook(self, g):
        def hook(module, args, output):
            outs = output if isinstance(output, (list, tuple)) else [output]
            acc = self.out.setdefault(g, [0.0, 0.0, 0.0])
            for y in outs:
                if isinstance(y, Tensor) and y.is_floating_point():
                    y = y.detach().float()
                    acc[0] += float(y.sum())
                    acc[1] += float(y.pow(2).sum())
                    acc[2] += y.numel()
        return hook

    def summary(self) -> dict[str, dict]:
        def mean_std(s, sq, n):
            m = s / n
            return m, math.sqrt(max(sq / n - m * m, 0.0))

        result: dict[str, dict] = {}
        for g, (zeros, n, dead, ch, s, sq) in self.relu.items():
            m, sd = mean_std(s, sq, n)
            result.setdefault(g, {}).update(relu_zero_fraction=zeros / n, dead_relu_fraction=dead / ch,
                                            relu_mean=m, relu_std=sd)
        for g, (s, sq, n) in self.out.items():
            if n:
                m, sd = mean_std(s, sq, n)
                result.setdefault(g, {}).update(out_mean=m, out_std=sd)
        return result


def check_update_ratios(model: nn.Module, loss_fn: Callable, batches: Iterable[tuple[Tensor, Tensor]],
                        optimizer: torch.optim.Optimizer, steps: int = 5, low: float = 1e-4, high: float = 1e-2,
                        dead_warn: float = 0.5, out_dir: str | Path | None = None,
                        device: torch.device | str = "cpu") -> dict:
    """Per parameter group: the median over ``steps`` optimiser steps of ||w_{t+1} - w_t|| / ||w_t|| and of the
    gradient norm; per stage (activation hooks on the first step's forward): ReLU zero share, dead channels, output
    mean / std. WARN when a group's ratio is outside [low, high] or a stage has more than ``dead_warn`` dead ReLU
    channels; FAIL when the loss or an update is not finite."""
    model.train()
    per_step: list[dict] = []
    acts: dict = {}
    batches = iter(batches)
    for step in range(steps):
        images, labels = next(batches)
        images, labels = images.to(device), labels.to(device)
        if step == 0:
            with ActivationStats(model) as hooks:
                outputs = _outputs(model, images)
            acts = hooks.summary()
        else:
            outputs = _outputs(model, images)
        loss, _ = loss_fn(outputs, labels)
        if not torch.isfinite(loss):
            return _result("ratios", FAIL, f"the loss is not finite at step {step}", activations=acts, plots=[])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        old = snapshot_params(model)
        optimizer.step()
        per_step.append(update_stats(model, old))
    groups = sorted({k.split("/", 1)[1] for k in per_step[0] if k.startswith("update_ratio/")},
                    key=lambda g: list(dict.fromkeys(group_name(n) for n, _ in model.named_parameters())).index(g))
    table = {}
    for g in groups:
        ratios = [s[f"update_ratio/{g}"] for s in per_step if s.get(f"update_ratio/{g}") is not None]
        grads = [s[f"grad_norm/{g}"] for s in per_step]
        table[g] = {"update_ratio": float(np.median(ratios)) if ratios else None,
                    "update_ratio_per_step": ratios, "grad_norm": float(np.median(grads))}
    overall = [s["update_ratio"] for s in per_step]
    bad_nonfinite = [g for g, v in table.items() if v["update_ratio"] is not None and not math.isfinite(v["update_ratio"])]
    low_g = [g for g, v in table.items() if _finite(v["update_ratio"]) and v["update_ratio"] < low]
    high_g = [g for g, v in table.items() if _finite(v["update_ratio"]) and v["update_ratio"] > high]
    dead_g = [g for g, v in acts.items() if v.get("dead_relu_fraction", 0.0) > dead_warn]
    plots = []
    if out_dir is not None:
        from ..visualize import plot_update_ratios

        path = Path(out_dir) / "update_ratios.png"
        plot_update_ratios(list(table), [v["update_ratio"] for v in table.values()], path, low, high)
        plots.append(str(path))
    valid = [v["update_ratio"] for v in table.values() if _finite(v["update_ratio"])]
    lr = optimizer.param_groups[0]["lr"]
    msg = (f"update/weight ratio at lr {lr:.1e}: median {float(np.median(overall)):.1e} overall, per group "
           f"{min(valid):.1e} .. {max(valid):.1e} (healthy about 1e-3, band [{low:.0e}, {high:.0e}])" if valid else
           "no update ratios (no trainable parameters with non-zero weights)")
    advice = []
    if low_g:
        advice.append(f"too small in {', '.join(low_g)}: those layers barely learn (raise the lr, or check that "
                      f"their gradients are not vanishing)")
    if high_g:
        advice.append(f"too large in {', '.join(high_g)}: the updates swamp the weights; lower the lr, or keep "
                      f"a warm-up (train.warmup_iters) so the first steps are smaller")
    if dead_g:
        advice.append(f"more than {100 * dead_warn:.0f}% dead ReLU channels in {', '.join(dead_g)}")
    verdict = FAIL if bad_nonfinite else WARN if advice else PASS
    return _result("ratios", verdict, msg, lr=lr, steps=steps, groups=table,
                   overall_update_ratio=overall, activations=acts, low=low, high=high, advice=advice or None,
                   plots=plots)


# ----------------------------------------------------------------------------- gradcheck


class _ToySegmentor(nn.Module):
    """A 2-layer stand-in for a Segmentor: (B, 3, H, W) -> {"out": (B, K, H/2, W/2)} [+ "feat" (B, C, H/2, W/2)]."""

    def __init__(self, num_classes: int = 2, channels: int = 3):
        super().__init__()
        self.num_classes, self.in_channels, self.feat_channels = num_classes, 3, channels
        self.body = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor, return_feat: bool = False) -> dict[str, Tensor]:
        feat = torch.tanh(self.body(x))
        out = {"out": self.cls(feat)}
        if return_feat:
            out["feat"] = feat
        return out


def _gradcheck_module(module: nn.Module, inputs: Sequence[Tensor], output: Callable | None = None) -> None:
    """gradcheck of module(*inputs) with respect to the inputs and every parameter, in float64."""
    from torch.func import functional_call

    module = module.double().eval()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in module.named_parameters()]
    inputs = [x.double().requires_grad_(True) for x in inputs]
    n = len(inputs)

    def fn(*args):
        out = functional_call(module, dict(zip(names, args[n:])), tuple(args[:n]))
        return output(out) if output is not None else out

    torch.autograd.gradcheck(fn, (*inputs, *params), eps=1e-6, atol=1e-5, rtol=1e-3)


def gradcheck_cases() -> dict[str, Callable[[], None]]:
    """Name -> a function that runs one gradcheck (raises on a mismatch). Tiny sizes: all run in about a second."""
    from ..models.attention import NonLocal2d, SEBlock
    from ..models.heads.ocr import ObjectAttentionBlock, SpatialGather, SpatialOCR
    from ..models.multiscale import MultiScale, hierarchical_weights

    def randomise_bn(m: nn.Module) -> nn.Module:  # non-trivial affine BN (NonLocal2d's starts at zero scale)
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.data.uniform_(0.5, 1.5)
                bn.bias.data.uniform_(-0.5, 0.5)
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
        return m

    def ms_case(merge: str):
        def run():
            torch.manual_seed(0)
            model = MultiScale(_ToySegmentor(), scales=(0.5, 1.0), merge=merge, attention_channels=3)
            randomise_bn(model)
            _gradcheck_module(model, [torch.randn(1, 3, 8, 8)],
                              lambda o: tuple(o[k] for k in ("out", "scale_weights") if k in o))
        return run

    def case(build, *shapes):
        def run():
            torch.manual_seed(0)
            _gradcheck_module(randomise_bn(build()), [torch.randn(*s) for s in shapes])
        return run

    def hier():
        a = [torch.rand(1, 1, 3, 3, dtype=torch.float64).mul(0.8).add(0.1).requires_grad_(True) for _ in range(2)]
        torch.autograd.gradcheck(lambda *x: hierarchical_weights(list(x)), tuple(a))

    return {
        "ocr.SpatialGather": case(SpatialGather, (1, 3, 3, 4), (1, 2, 3, 4)),
        "ocr.ObjectAttentionBlock": case(lambda: ObjectAttentionBlock(4, 3), (1, 4, 3, 3), (1, 4, 2, 1)),
        "ocr.SpatialOCR": case(lambda: SpatialOCR(4, 3, 4), (1, 4, 3, 3), (1, 4, 2, 1)),
        "attention.SEBlock": case(lambda: SEBlock(4, reduction=2), (2, 4, 3, 3)),
        "attention.NonLocal2d": case(lambda: NonLocal2d(4, reduction=2), (1, 4, 3, 3)),
        "multiscale.hierarchical_weights": hier,
        "multiscale.MultiScale[avg]": ms_case("avg"),
        "multiscale.MultiScale[max]": ms_case("max"),
        "multiscale.MultiScale[attention]": ms_case("attention"),
        "multiscale.MultiScale[hierarchical]": ms_case("hierarchical"),
    }


def check_gradients(cases: dict[str, Callable[[], None]] | None = None) -> dict:
    """Run the gradchecks; FAIL lists the modules whose analytic and numerical gradients differ."""
    cases = cases if cases is not None else gradcheck_cases()
    rows = {}
    for name, run in cases.items():
        t0 = time.time()
        try:
            run()
            rows[name] = {"passed": True, "seconds": time.time() - t0}
        except Exception as exc:  # GradcheckError, or the module failing on float64
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            rows[name] = {"passed": False, "seconds": time.time() - t0, "error": f"{type(exc).__name__}: {first}"}
    failed = [n for n, r in rows.items() if not r["passed"]]
    if failed:
        return _result("gradcheck", FAIL, f"{len(failed)} of {len(rows)} gradchecks failed: {', '.join(failed)}",
                       cases=rows)
    return _result("gradcheck", PASS, f"{len(rows)} modules: analytic gradients match finite differences (float64)",
                   cases=rows)


# ----------------------------------------------------------------------------- data


def _label_name(dataset, i: int) -> str:
    for attr in ("mask_path", "image_path"):
        if hasattr(dataset, attr):
            try:
                return str(getattr(dataset, attr)(i))
            except Exception:  # noqa: BLE001 - a name is a nicety
                pass
    return f"#{i}"


def _load_label(dataset, i: int) -> np.ndarray:
    if hasattr(dataset, "raw"):  # reads the image too: a mask of another size than its image fails here
        return np.asarray(dataset.raw(i)[1])
    if hasattr(dataset, "load_label"):
        return np.asarray(dataset.load_label(i))
    label = dataset[i][1]
    return label.numpy() if isinstance(label, Tensor) else np.asarray(label)


def scan_labels(dataset, max_samples: int | None = None, progress: bool = False) -> dict:
    """Raw-label statistics of one split: per-class pixel counts, ignore pixels, images with only ignore pixels,
    values outside 0..K-1 (and not the ignore index) per file, and pairs that fail to load (ContextSegError)."""
    from tqdm import tqdm

    k, ignore = dataset.num_classes, getattr(dataset, "ignore_index", 255)
    n = len(dataset)
    idx = range(n) if not max_samples or max_samples >= n else \
        sorted(set(np.linspace(0, n - 1, max_samples).round().astype(int).tolist()))
    counts = np.zeros(k, dtype=np.int64)
    ignored = outside = 0
    all_ignore, out_of_range, errors = [], [], []
    for i in tqdm(idx, desc="labels", disable=not progress, leave=False, dynamic_ncols=True):
        try:
            label = _load_label(dataset, i)
        except ContextSegError as exc:
            errors.append({"file": _label_name(dataset, i), "error": str(exc).strip().splitlines()[-1]})
            continue
        flat = label.ravel()
        values, c = np.unique(flat, return_counts=True)
        values = values.astype(np.int64)
        inside = (values >= 0) & (values < k)
        counts[values[inside]] += c[inside]
        is_ignore = values == ignore
        ignored += int(c[is_ignore].sum())
        bad = ~inside & ~is_ignore
        if bad.any():
            outside += int(c[bad].sum())
            out_of_range.append({"file": _label_name(dataset, i), "values": values[bad].tolist(),
                                 "pixels": int(c[bad].sum())})
        if flat.size and is_ignore.all():
            all_ignore.append(_label_name(dataset, i))
    labelled = int(counts.sum())
    total = labelled + ignored + outside
    return {"samples": len(idx), "of": n, "pixels": total, "labelled_pixels": labelled,
            "ignore_share": ignored / max(total, 1), "out_of_range_pixels": outside, "counts": counts.tolist(),
            "shares": (counts / max(labelled, 1)).tolist(), "all_ignore": all_ignore, "out_of_range": out_of_range,
            "errors": errors}


def check_data(datasets: dict, max_samples: int | None = None, out_dir: str | Path | None = None,
               progress: bool = False, rare: float = 1e-3) -> dict:
    """Label checks over {split: dataset}. FAIL: labels outside the classes or pairs that fail to load; WARN: images
    with only ignore pixels, or classes absent from a split; shares below ``rare`` are listed (with a hint at
    class weights) without changing the verdict."""
    first = next(iter(datasets.values()))
    classes = list(getattr(first, "classes", [str(c) for c in range(first.num_classes)]))
    splits = {name: scan_labels(ds, max_samples, progress) for name, ds in datasets.items()}
    problems, warnings, notes = [], [], []
    for name, s in splits.items():
        if s["errors"]:
            files = ", ".join(e["file"] for e in s["errors"][:3]) + (" ..." if len(s["errors"]) > 3 else "")
            problems.append(f"{name}: {len(s['errors'])} pair(s) rejected by the dataset ({files}); first: "
                            f"{s['errors'][0]['error']}")
        if s["out_of_range"]:
            files = ", ".join(r["file"] for r in s["out_of_range"][:3])
            values = sorted({v for r in s["out_of_range"] for v in r["values"]})
            problems.append(f"{name}: {len(s['out_of_range'])} label file(s) have values {values[:10]} outside "
                            f"0..{len(classes) - 1} and not ignore ({files})")
        if s["all_ignore"]:
            warnings.append(f"{name}: {len(s['all_ignore'])} image(s) have only ignore pixels "
                            f"({', '.join(s['all_ignore'][:3])})")
        absent = [c for c, n in zip(classes, s["counts"]) if n == 0]
        if absent and s["labelled_pixels"]:
            warnings.append(f"{name}: classes never present in {s['samples']} images: {', '.join(absent)}")
        rare_c = [f"{c} ({100 * v:.3f}%)" for c, v in zip(classes, s["shares"]) if 0 < v < rare]
        if rare_c:
            notes.append(f"{name}: rare classes {', '.join(rare_c)}; consider loss.kwargs.class_weights="
                         f"median_frequency or loss.name=ohem")
    plots = []
    if out_dir is not None:
        from ..visualize import plot_class_frequencies

        path = Path(out_dir) / "class_frequencies.png"
        plot_class_frequencies(classes, {n: s["shares"] for n, s in splits.items()}, path,
                               getattr(first, "palette", None))
        plots.append(str(path))
    verdict = FAIL if problems else WARN if warnings else PASS
    main = next(iter(splits.values()))
    shares = [v for v in main["shares"] if v > 0]
    imbalance = max(shares) / min(shares) if shares else None
    summary = (f"{sum(s['samples'] for s in splits.values())} label maps in {', '.join(splits)}; "
               f"ignore {100 * main['ignore_share']:.1f}% of pixels; most/least frequent class "
               f"{imbalance:.1f}x" if imbalance else "no labelled pixels")
    return _result("data", verdict, summary, classes=classes, splits=splits, imbalance=imbalance,
                   problems=problems or None, warnings=warnings or None, notes=notes or None, plots=plots)


# ----------------------------------------------------------------------------- running for a Config


DEFAULT_STEPS = {"init": 2, "overfit": 100, "lr": 60, "ratios": 5}


class Doctor:
    """Runs the checks for a Config: one initial model (seeded), copied fresh for every check."""

    def __init__(self, cfg, out_dir: str | Path | None = None, steps: dict | None = None,
                 batch_size: int | None = None, data_samples: int | None = None, overfit_samples: int = 2,
                 overfit_lr: float = 1e-3, overfit_threshold: float = 0.05, lr_range: Sequence[float] = (1e-6, 1.0),
                 init_tol: float = 0.1, progress: bool = True):
        from .runtime import seed_everything, select_device

        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / "doctor"
        self.steps = {**DEFAULT_STEPS, **(steps or {})}
        unknown = set(self.steps) - set(DEFAULT_STEPS)
        if unknown:
            raise ContextSegError(f"unknown step count(s) {sorted(unknown)}; set {', '.join(DEFAULT_STEPS)}")
        self.batch_size = batch_size or cfg.data.batch_size
        self.data_samples = data_samples
        self.overfit_samples, self.overfit_lr, self.overfit_threshold = overfit_samples, overfit_lr, overfit_threshold
        self.lr_range = tuple(float(v) for v in lr_range)
        self.init_tol = init_tol
        self.progress = progress
        self.device = select_device(cfg.device)
        seed_everything(cfg.seed)
        self._data = self._model = self._loss = None

    # lazily built, so that gradcheck runs (and the data check reports) even when the data or model fail to build
    def data(self):
        if self._data is None:
            from .segmentation import build_datasets

            self._data = build_datasets(self.cfg)
        return self._data

    def model(self) -> nn.Module:
        if self._model is None:
            from .segmentation import build_model_for

            torch.manual_seed(self.cfg.seed)
            self._model = build_model_for(self.cfg, self.data()[0].num_classes)
        return copy.deepcopy(self._model).to(self.device)

    def loss(self):
        if self._loss is None:
            from ..losses import build_loss_for

            self._loss = build_loss_for(self.cfg, self.data()[0], progress=False).to(self.device)
        return self._loss

    def batches(self):
        return batch_stream(self.data()[0], self.batch_size, seed=self.cfg.seed)

    def optimizer(self, model):
        from .trainer import build_optimizer

        return build_optimizer(model, self.cfg.train)

    # the checks
    def init(self):
        train = self.data()[0]
        stream = self.batches()
        batches = [next(stream) for _ in range(self.steps["init"])]
        return check_init_loss(self.model(), batches, train.num_classes, train.ignore_index, self.init_tol,
                               train.classes, self.device)

    def overfit(self):
        train = self.data()[0]
        images, labels = fixed_batch(train, self.overfit_samples, self.cfg.data.crop_size)
        return check_overfit(self.model(), self.loss(), images.to(self.device), labels.to(self.device),
                             self.steps["overfit"], self.overfit_lr, self.overfit_threshold,
                             ignore_index=train.ignore_index, out_dir=self.out_dir, progress=self.progress)

    def lr(self):
        model = self.model()
        return lr_range_test(model, self.loss(), self.batches(), self.optimizer(model), *self.lr_range,
                             steps=self.steps["lr"], configured_lr=self.cfg.train.lr, out_dir=self.out_dir,
                             device=self.device, progress=self.progress)

    def ratios(self):
        model = self.model()
        return check_update_ratios(model, self.loss(), self.batches(), self.optimizer(model), self.steps["ratios"],
                                   out_dir=self.out_dir, device=self.device)

    def gradcheck(self):
        return check_gradients()

    def data_check(self):
        train, val = self.data()
        splits = {self.cfg.data.train_split: train}
        if val is not None:
            splits[self.cfg.data.val_split] = val
        return check_data(splits, self.data_samples, self.out_dir, self.progress)

    def run(self, checks: Sequence[str] = CHECKS, echo: bool = True) -> dict:
        unknown = [c for c in checks if c not in CHECKS]
        if unknown:
            raise ContextSegError(f"unknown doctor check(s) {unknown}; choose from {','.join(CHECKS)}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        results = {}
        for name in [c for c in CHECKS if c in checks]:
            t0 = time.time()
            try:
                result = getattr(self, "data_check" if name == "data" else name)()
            except ContextSegError as exc:
                result = _result(name, FAIL, str(exc).strip().splitlines()[-1])
            result["seconds"] = round(time.time() - t0, 2)
            results[name] = result
            if echo:
                print(format_result(result), flush=True)
        report = {"config": self.cfg.name, "overall": worst(r["verdict"] for r in results.values()),
                  "device": str(self.device), "checks": results}
        with open(self.out_dir / "doctor.json", "w") as f:
            json.dump(_jsonable(report), f, indent=2)
        if echo:
            print(f"overall: {report['overall']}; report in {self.out_dir / 'doctor.json'}")
        return report


def run_doctor(cfg, checks: Sequence[str] = CHECKS, out_dir: str | Path | None = None, echo: bool = True,
               **options) -> dict:
    """Run ``checks`` for ``cfg`` (options: see ``Doctor``); prints each verdict, writes OUT/doctor.json and the
    PNGs (default OUT = cfg.output_dir/doctor). Returns the report {"overall", "checks": {name: result}}."""
    return Doctor(cfg, out_dir, **options).run(checks, echo)


def format_result(r: dict) -> str:
    """The verdict line and the numbers behind it, as printed by `contextseg doctor`."""
    lines = [f"[{r['verdict']}] {r['check']:<9} {r['summary']}  ({r.get('seconds', 0):.1f} s)"]
    pad = " " * 7
    name = r["check"]
    if name == "init" and "losses" in r:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in r["losses"].items())
        lines.append(f"{pad}CE per output: {parts}; best constant predictor {r['best_constant_loss']:.3f}; "
                     f"logit std {r['logit_std']:.3f}")
    elif name == "ratios" and "groups" in r:
        acts = r.get("activations", {})
        for g, v in r["groups"].items():
            a = acts.get(g, {})
            ratio = f"{v['update_ratio']:.1e}" if v["update_ratio"] is not None else "   -   "
            extra = ""
            if "dead_relu_fraction" in a:
                extra += f"  dead ReLU {100 * a['dead_relu_fraction']:4.1f}%  zeros {100 * a['relu_zero_fraction']:4.1f}%"
            if "out_mean" in a:
                extra += f"  out mean {a['out_mean']:+.2f} std {a['out_std']:.2f}"
            lines.append(f"{pad}{g:<28} ratio {ratio}  grad {v['grad_norm']:.2e}{extra}")
    elif name == "gradcheck" and "cases" in r:
        for n, c in r["cases"].items():
            lines.append(f"{pad}{'ok  ' if c['passed'] else 'FAIL'} {n}" + (f": {c['error']}" if not c["passed"] else ""))
    elif name == "data" and "splits" in r:
        for split, s in r["splits"].items():
            shares = ", ".join(f"{c} {100 * v:.1f}%" for c, v in zip(r["classes"], s["shares"]))
            lines.append(f"{pad}{split} ({s['samples']} of {s['of']}): {shares}")
        for key in ("problems", "warnings", "notes"):
            lines += [f"{pad}{line}" for line in r.get(key) or []]
    for key in ("cause", "advice", "stopped"):
        value = r.get(key)
        if value:
            lines += [f"{pad}{key}: {v}" for v in (value if isinstance(value, list) else [value])]
    lines += [f"{pad}plot: {p}" for p in r.get("plots") or []]
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def parse_checks(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """"init,lr" / ["init", "lr"] / "all" / None -> the checks in their run order; unknown names are an error."""
    if spec is None or spec == "all":
        return CHECKS
    names = [n.strip() for part in ([spec] if isinstance(spec, str) else spec) for n in part.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise ContextSegError(f"unknown doctor check(s) {unknown or names}; use --checks with a comma-separated "
                              f"subset of {','.join(CHECKS)}")
    return tuple(c for c in CHECKS if c in names)


def parse_steps(items: Sequence[str] | None) -> dict[str, int]:
    """--steps values: "N" sets the overfit, lr and ratios step counts; "check=N" sets one (init=N: init batches)."""
    steps: dict[str, int] = {}
    for item in items or []:
        for part in item.split(","):
            key, _, value = part.rpartition("=")
            try:
                n = int(value)
            except ValueError:
                n = 0
            if n < 1 or (key and key not in DEFAULT_STEPS):
                raise ContextSegError(f"--steps {part!r}: give N or CHECK=N with N >= 1 and CHECK one of "
                                      f"{', '.join(DEFAULT_STEPS)} (e.g. --steps overfit=200 lr=100)")
            steps.update({key: n} if key else {"overfit": n, "lr": n, "ratios": n})
    return steps
