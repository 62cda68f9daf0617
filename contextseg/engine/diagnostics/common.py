"""Verdicts, parameter groups, update-to-weight statistics and batch helpers shared by the checks."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.resize import resize



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


def _ce(logits: Tensor, labels: Tensor, ignore_index: int, align_corners: bool) -> Tensor:
    """Plain CE of logits resized to the labels with the model's ``align_corners``."""
    return F.cross_entropy(resize(logits, labels.shape[-2:], align_corners).float(), labels, ignore_index=ignore_index)


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def fixed_crop_transform(crop_size: Sequence[int]):
    """No augmentation: pad (ignore label, mean colour) and centre-crop to crop_size, then normalise."""
    import albumentations as A
    import cv2

    from ...data.transforms import MEAN, STD, SegTransform

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
