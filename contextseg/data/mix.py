"""Batch mixes for semantic segmentation, applied to a whole batch on its device after loading:

    cutmix(images, labels, alpha=1.0)       CutMix (Yun et al. 2019, Sec. 3.1, Alg. A1) for dense labels
    copy_paste(images, labels, classes=None) Copy-Paste (Ghiasi et al. 2021, Sec. 3) for dense labels
    BatchMix(mix, p)                        one of them with probability p per batch (the trainer's hook)

Both take images (B, C, H, W) float and labels (B, H, W) int64 (ignore_index 255) and return new
``(images, labels)`` of the same shapes; the inputs are not modified. Each sample's partner is
``perm[i]`` for a random permutation of the batch (a sample may draw itself: then nothing changes for
cutmix). The label map always follows the image exactly: every pixel whose image value comes from the
partner takes the partner's label there.

Randomness comes from ``generator`` (a CPU ``torch.Generator``) or, when None, from torch's global
RNG, which checkpoints save and restore; all draws are made on the CPU, so GPU and CPU runs with the
same seed mix the same way.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ContextSegError

IGNORE_INDEX = 255


def _check(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dim() != 4 or labels.dim() != 3 or images.shape[0] != labels.shape[0] \
            or images.shape[-2:] != labels.shape[-2:]:
        raise ContextSegError(f"batch mixes take images (B, C, H, W) and labels (B, H, W) of the same B, H, W; "
                              f"got {tuple(images.shape)} and {tuple(labels.shape)}")


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy RNG seeded from the torch generator (numpy has the Beta and connected-component tools)."""
    seed = torch.randint(0, 2**62, (1,), generator=generator).item()
    return np.random.default_rng(seed)


def cutmix_box(height: int, width: int, alpha: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a box whose area fraction is 1 - lam, lam ~ Beta(alpha, alpha), up to rounding.

    The box has the image's aspect ratio (sides sqrt(1 - lam) * H, sqrt(1 - lam) * W, as CutMix) and lies
    wholly inside the image, its top-left corner uniform over the valid positions. (The reference CutMix
    code centres the box uniformly and clips it, which makes the mean area smaller than 1 - lam; here the
    area follows Beta(alpha, alpha) as stated: mean 0.5.)
    """
    lam = rng.beta(alpha, alpha)
    r = np.sqrt(1.0 - lam)
    h, w = int(round(height * r)), int(round(width * r))
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, left, h, w


def cutmix(images: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix for segmentation: one box per batch (area fraction ~ Beta(alpha, alpha), see `cutmix_box`)
    is cut from each sample's partner perm[i] and pasted, image and label map alike, at the same place.

    (B, C, H, W) float, (B, H, W) int64 -> the same shapes.
    """
    _check(images, labels)
    if alpha <= 0:
        raise ContextSegError(f"cutmix alpha must be > 0, got {alpha}")
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
    top, left, h, w = cutmix_box(images.shape[-2], images.shape[-1], alpha, _numpy_rng(generator))
    images, labels = images.clone(), labels.clone()
    if h > 0 and w > 0:
        images[:, :, top:top + h, left:left + w] = images[perm, :, top:top + h, left:left + w]
        labels[:, top:top + h, left:left + w] = labels[perm, top:top + h, left:left + w]
    return images, labels


def _components(label: np.ndarray, classes, ignore_index: int) -> tuple[np.ndarray, int]:
    """Number the 4-connected regions of each chosen class present in `label`: (H, W) int32 ids
    1..n (0: not a chosen object; ``ignore_index`` is never chosen) and n."""
    from scipy import ndimage

    ids = np.zeros(label.shape, dtype=np.int32)
    n = 0
    for c in np.unique(label).tolist():
        if c == ignore_index or (classes is not None and c not in classes):
            continue
        comp, k = ndimage.label(label == c)
        ids += np.where(comp > 0, comp + n, 0).astype(np.int32)
        n += k
    return ids, n


def _place(src: torch.Tensor, height: int, width: int, top: int, left: int, fill: float = 0.0) -> torch.Tensor:
    """Put (C, h, w) `src` on a (C, height, width) canvas with its top-left corner at (top, left) (negative:
    cropped); canvas pixels it does not cover are `fill`."""
    out = src.new_full((src.shape[0], height, width), fill)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + src.shape[1], height), min(left + src.shape[2], width)
    if y1 > y0 and x1 > x0:
        out[:, y0:y1, x0:x1] = src[:, y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def copy_paste(images: torch.Tensor, labels: torch.Tensor, classes=None, scale_range=(0.5, 1.5), flip: float = 0.5,
               object_prob: float = 0.5, image_mode: str = "bilinear", ignore_index: int = IGNORE_INDEX,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy-Paste for segmentation (Ghiasi et al. 2021: objects of one image pasted onto another, with
    scale jittering and flips; "the label map follows exactly").

    For each sample i with partner j = perm[i]:
      1. objects = 4-connected components of the chosen classes in labels[j] (``classes`` None: every class,
         ``ignore_index`` never); each is selected with probability ``object_prob`` (at least one when any
         exist), the paper's "random subset of objects";
      2. partner image, label and selection mask are flipped left-right with probability ``flip`` and
         rescaled by s ~ U(scale_range) (label and mask nearest; the image ``image_mode``: "bilinear" as
         the paper's scale jitter, or "nearest", which keeps every pasted image pixel an exact partner pixel);
      3. the result is placed at a random offset (uniform over the positions where it covers the whole
         sample when s > 1, or lies inside it when s < 1) and the selected pixels overwrite sample i: image
         and label alike, so occluded pixels take the pasted label. Ignored partner pixels are never pasted.

    (B, C, H, W) float, (B, H, W) int64 -> the same shapes. Only labels of ``classes`` are ever added.
    """
    _check(images, labels)
    if image_mode not in ("bilinear", "nearest"):
        raise ContextSegError(f"copy_paste image_mode is 'bilinear' or 'nearest', got {image_mode!r}")
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi:
        raise ContextSegError(f"copy_paste scale_range must be [min, max] with 0 < min <= max, got {scale_range}")
    classes = None if classes is None else {int(c) for c in classes} - {ignore_index}
    B, _, H, W = images.shape
    perm = torch.randperm(B, generator=generator).tolist()
    rng = _numpy_rng(generator)
    labels_np = labels.detach().cpu().numpy()
    out_images, out_labels = images.clone(), labels.clone()
    for i, j in enumerate(perm):
        ids, n = _components(labels_np[j], classes, ignore_index)
        if n == 0:
            continue
        pick = rng.random(n) < object_prob
        if not pick.any():
            pick[rng.integers(n)] = True
        mask = np.concatenate([[False], pick])[ids]
        src_img = images[j]
        src_lab = torch.stack([labels[j].float(), torch.from_numpy(mask).to(device=images.device, dtype=torch.float32)])
        if rng.random() < flip:
            src_img, src_lab = src_img.flip(-1), src_lab.flip(-1)
        s = rng.uniform(lo, hi)
        h, w = max(1, int(round(H * s))), max(1, int(round(W * s)))
        if (h, w) != (H, W):
            kw = {"align_corners": False} if image_mode == "bilinear" else {}
            src_img = F.interpolate(src_img[None], size=(h, w), mode=image_mode, **kw)[0]
            src_lab = F.interpolate(src_lab[None], size=(h, w), mode="nearest")[0]
        top = int(rng.integers(min(0, H - h), max(0, H - h) + 1))
        left = int(rng.integers(min(0, W - w), max(0, W - w) + 1))
        src_img = _place(src_img, H, W, top, left)
        src_lab = _place(src_lab, H, W, top, left)
        paste = src_lab[1] > 0.5
        out_images[i] = torch.where(paste, src_img, out_images[i])
        out_labels[i] = torch.where(paste, src_lab[0].round().to(labels.dtype), out_labels[i])
    return out_images, out_labels


MIXES = {"cutmix": cutmix, "copy_paste": copy_paste}


class BatchMix:
    """Apply one batch mix with probability p per batch: ``images, labels = BatchMix("cutmix", 0.5)(images, labels)``.

    mix: "cutmix" | "copy_paste"; kwargs go to that function (alpha; classes, scale_range, flip,
    object_prob, image_mode). The coin and the mix draw from ``generator`` (None: torch's global RNG).
    """

    def __init__(self, mix: str = "cutmix", p: float = 0.5, ignore_index: int = IGNORE_INDEX,
                 generator: torch.Generator | None = None, **kwargs):
        if mix not in MIXES:
            raise ContextSegError(f"unknown batch mix {mix!r}; use one of none, {', '.join(MIXES)} (data.mix)")
        if not 0.0 <= p <= 1.0:
            raise ContextSegError(f"batch mix probability must be in [0, 1], got {p} (data.mix_prob)")
        params = inspect.signature(MIXES[mix]).parameters
        unknown = [k for k in kwargs if k not in params or k in ("images", "labels", "generator", "ignore_index")]
        if unknown:
            allowed = [k for k in params if k not in ("images", "labels", "generator", "ignore_index")]
            raise ContextSegError(f"{mix} has no argument(s) {unknown} (data.mix_kwargs); its arguments: "
                                  f"{', '.join(allowed)}")
        self.mix, self.p, self.kwargs, self.generator = mix, float(p), dict(kwargs), generator
        if "ignore_index" in params:
            self.kwargs["ignore_index"] = ignore_index

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.p <= 0 or torch.rand((), generator=self.generator).item() >= self.p:
            return images, labels
        return MIXES[self.mix](images, labels, generator=self.generator, **self.kwargs)

    def __repr__(self) -> str:
        return f"BatchMix({self.mix!r}, p={self.p}, {self.kwargs})"


def build_batch_mix(data_cfg, ignore_index: int = IGNORE_INDEX, generator: torch.Generator | None = None):
    """The trainer's batch transform from a DataConfig (mix, mix_prob, mix_kwargs); None for mix "none"."""
    mix = getattr(data_cfg, "mix", "none")
    if mix in (None, "none") or getattr(data_cfg, "mix_prob", 0.0) <= 0:
        return None
    return BatchMix(mix, data_cfg.mix_prob, ignore_index=ignore_index, generator=generator,
                    **dict(getattr(data_cfg, "mix_kwargs", {}) or {}))
