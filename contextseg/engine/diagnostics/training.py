"""Training-dynamics checks: loss at initialisation, overfitting one batch, LR range test, update ratios."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import ContextSegError
from ...models.resize import align_corners_of, resize
from .common import (
    FAIL, PASS, WARN, _ce, _class_outputs, _finite, _outputs, _result, _strip_wrappers, group_name,
    snapshot_params, update_stats,
)


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
    ac = align_corners_of(model)
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        valid = labels != ignore_index
        n = int(valid.sum())
        if n == 0:
            continue
        outs = _class_outputs(_outputs(model, images), num_classes)
        for k, v in outs.items():
            sums[k] = sums.get(k, 0.0) + float(_ce(v, labels, ignore_index, ac)) * n
        main = outs["out"].float()
        up = resize(main, labels.shape[-2:], ac)
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
        ce = float(_ce(outputs["out"].detach(), labels, ignore_index, align_corners_of(model)))
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
        logits = resize(logits, labels.shape[-2:], align_corners_of(model))
        valid = labels != ignore_index
        accuracy = float((logits.argmax(1) == labels)[valid].float().mean()) if valid.any() else None
    final = curve[-1] if curve else float("nan")
    plots = []
    if out_dir is not None:
        from ...visualize import plot_loss_curve

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
        from ...visualize import plot_lr_finder

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
        from ...visualize import plot_update_ratios

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
