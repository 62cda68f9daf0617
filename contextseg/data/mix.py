"""Batch mixes for semantic segmentation, applied to a whole batch on its device after loading:

    cutmix(images, labels, alpha=1.0, box="reference")        CutMix (Yun et al. 2019, Sec. 3.1, Alg. A1)
    copy_paste(images, labels, classes=None, scale_range="standard")  Copy-Paste (Ghiasi et al. 2021, Sec. 3)
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
CUTMIX_BOXES = ("reference", "inside")
# Copy-Paste scale jitter ranges (Ghiasi et al. 2021, Sec. 3 "Large Scale Jittering", Fig. 3)
SCALE_JITTER = {"standard": (0.8, 1.25), "large": (0.1, 2.0)}


def _check(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dim() != 4 or labels.dim() != 3 or images.shape[0] != labels.shape[0] \
            or images.shape[-2:] != labels.shape[-2:]:
        raise ContextSegError(f"batch mixes take images (B, C, H, W) and labels (B, H, W) of the same B, H, W; "
                              f"got {tuple(images.shape)} and {tuple(labels.shape)}")


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy RNG seeded from the torch generator (numpy has the Beta and connected-component tools)."""
    seed = torch.randint(0, 2**62, (1,), generator=generator).item()
    return np.random.default_rng(seed)


def cutmix_box(height: int, width: int, alpha: float, rng: np.random.Generator,
               box: str = "reference") -> tuple[int, int, int, int]:
    """(top, left, h, w) of a CutMix box for an image of height x width; lam ~ Beta(alpha, alpha).

    box "reference" (default): as the official code (clovaai/CutMix-PyTorch, train.py ``rand_bbox``): sides
        int(sqrt(1 - lam) * H), int(sqrt(1 - lam) * W), a centre uniform over the pixels, corners centre -+ side // 2
        clipped to the image. Clipping makes the mean area smaller than 1 - lam (at alpha 1: 0.30-0.32 of the image,
        0.321 in the continuous limit, instead of 0.5), so the caller takes lam = 1 - h * w / (H * W) from the
        returned box, as train.py does after ``rand_bbox`` ("adjust lambda to exactly match pixel ratio").
    box "inside": the box lies wholly inside the image (top-left corner uniform over the valid positions), sides
        round(sqrt(1 - lam) * H), round(sqrt(1 - lam) * W): the area fraction follows Beta(alpha, alpha) itself
        (mean 0.5 at alpha 1), up to rounding.
    """
    if box not in CUTMIX_BOXES:
        raise ContextSegError(f"cutmix box is 'reference' or 'inside', got {box!r} (data.mix_kwargs.box)")
    lam = rng.beta(alpha, alpha)
    r = np.sqrt(1.0 - lam)
    if box == "inside":
        h, w = int(round(height * r)), int(round(width * r))
        top = int(rng.integers(0, height - h + 1))
        left = int(rng.integers(0, width - w + 1))
        return top, left, h, w
    cut_h, cut_w = int(height * r), int(width * r)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, left, bottom - top, right - left


def cutmix(images: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0, box: str = "reference",
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix for segmentation: one box per batch (``cutmix_box``: "reference" centred uniformly and clipped as the
    official code, or "inside") is cut from each sample's partner perm[i] and pasted, image and label map alike, at
    the same place. One box for the whole batch, as the official train.py.

    (B, C, H, W) float, (B, H, W) int64 -> the same shapes.
    """
    _check(images, labels)
    if alpha <= 0:
        raise ContextSegError(f"cutmix alpha must be > 0, got {alpha}")
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
    top, left, h, w = cutmix_box(images.shape[-2], images.shape[-1], alpha, _numpy_rng(generator), box)
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


def _scale_range(scale_range) -> tuple[float, float]:
    if isinstance(scale_range, str):
        if scale_range not in SCALE_JITTER:
            raise ContextSegError(f"copy_paste scale_range is 'standard' (0.8-1.25), 'large' (0.1-2.0) or "
                                  f"[min, max], got {scale_range!r}")
        return SCALE_JITTER[scale_range]
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi:
        raise ContextSegError(f"copy_paste scale_range must be [min, max] with 0 < min <= max, got {scale_range}")
    return lo, hi


def scale_jitter(image: torch.Tensor, label: torch.Tensor, scale_range: tuple[float, float], flip: float,
                 rng: np.random.Generator, image_mode: str = "bilinear",
                 ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flip and scale jitter of one image at a fixed output size, as Copy-Paste applies to each of its two
    images (Ghiasi et al. 2021, Sec. 3 and Fig. 3; tensorflow/tpu models/official/detection/utils/input_utils.py
    ``resize_and_crop_image``): flip left-right with probability `flip`, resize by s ~ U(scale_range) (the image
    with `image_mode`, the label nearest), then back to H x W: a random H x W crop when larger, or padding when
    smaller (image 0, i.e. the mean colour of the normalised images, as the reference pads after normalising;
    label `ignore_index`). (C, H, W) float, (H, W) int64 -> the same shapes.

    Deviation: the reference pads at the bottom-right (the scaled image at the top-left corner); here a smaller
    image sits at a random offset, uniform over the positions inside the H x W canvas, so that shrunk content and
    the ignored padding are not always in the same corner of the segmentation crops.
    """
    height, width = label.shape
    if rng.random() < flip:
        image, label = image.flip(-1), label.flip(-1)
    s = rng.uniform(*scale_range)
    h, w = max(1, int(round(height * s))), max(1, int(round(width * s)))
    if (h, w) == (height, width):
        return image, label
    kw = {"align_corners": False} if image_mode == "bilinear" else {}
    image = F.interpolate(image[None], size=(h, w), mode=image_mode, **kw)[0]
    label = F.interpolate(label[None, None].float(), size=(h, w), mode="nearest")[0]
    top = int(rng.integers(min(0, height - h), max(0, height - h) + 1))
    left = int(rng.integers(min(0, width - w), max(0, width - w) + 1))
    image = _place(image, height, width, top, left)
    label = _place(label, height, width, top, left, float(ignore_index))[0].round().long()
    return image, label


def copy_paste(images: torch.Tensor, labels: torch.Tensor, classes=None, scale_range="standard",
               flip: float = 0.5, object_prob: float | None = None, destination: bool = True,
               image_mode: str = "bilinear", ignore_index: int = IGNORE_INDEX,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy-Paste for segmentation (Ghiasi et al. 2021, Sec. 3: "we randomly select two images and apply random
    scale jittering and random horizontal flipping on each of them. Then we select a random subset of objects from
    one of the images and paste them onto the other image"; official code tensorflow/tpu
    models/official/detection/dataloader/extract_objects_parser.py and maskrcnn_parser_with_copy_paste.py).

    For each sample i (the destination) with partner j = perm[i] (the source):
      1. both images are jittered independently by ``scale_jitter``: flipped with probability ``flip``, resized by
         s ~ U(scale_range) and cropped or padded back to the batch's H x W (padded pixels: image 0, label
         ``ignore_index``). scale_range "standard" = SSJ 0.8-1.25 (default), "large" = LSJ 0.1-2.0, or [min, max].
         ``destination=False`` jitters the source only (contextseg's earlier behaviour, there with [0.5, 1.5]);
      2. objects = 4-connected components of the chosen classes in the jittered source label (``classes`` None:
         every class; ``ignore_index``, hence padding, never). ``object_prob`` None: as the official code, a
         number m ~ U{0..n} of the n objects, then a random subset of m (m = 0 pastes nothing); a float: each object
         independently with that probability, at least one;
      3. the selected source pixels overwrite the jittered destination at the same place, image and label alike,
         so occluded pixels take the pasted label (the paper's binary alpha composition, without its optional
         Gaussian blur of alpha, which the official code also leaves out).

    The image is resized with ``image_mode`` ("bilinear" as the reference; "nearest" keeps every image pixel an
    exact input pixel), labels nearest. (B, C, H, W) float, (B, H, W) int64 -> the same shapes. Only labels of
    ``classes`` (and ``ignore_index`` for padding) are ever added.

    Default SSJ, not LSJ: here the samples come already scale-jittered and cropped by the dataset transform
    (data.scale_range, 0.5-2.0 by default), whereas in the paper the copy-paste jitter is the images' only scale
    augmentation; LSJ on top would compound to 0.05-4x and pad about 30% of each destination with ignored pixels
    (SSJ: about 8%). Use "large" with a dataset transform without scale jitter to follow the paper's best setting.
    """
    _check(images, labels)
    if image_mode not in ("bilinear", "nearest"):
        raise ContextSegError(f"copy_paste image_mode is 'bilinear' or 'nearest', got {image_mode!r}")
    if object_prob is not None and not 0.0 <= object_prob <= 1.0:
        raise ContextSegError(f"copy_paste object_prob is None or a probability in [0, 1], got {object_prob}")
    scale = _scale_range(scale_range)
    classes = None if classes is None else {int(c) for c in classes} - {ignore_index}
    perm = torch.randperm(images.shape[0], generator=generator).tolist()
    rng = _numpy_rng(generator)
    out_images, out_labels = images.clone(), labels.clone()
    for i, j in enumerate(perm):
        if destination:
            out_images[i], out_labels[i] = scale_jitter(images[i], labels[i], scale, flip, rng, image_mode,
                                                        ignore_index)
        src_img, src_lab = scale_jitter(images[j], labels[j], scale, flip, rng, image_mode, ignore_index)
        ids, n = _components(src_lab.cpu().numpy(), classes, ignore_index)
        if n == 0:
            continue
        if object_prob is None:
            pick = np.zeros(n, dtype=bool)
            pick[rng.permutation(n)[:rng.integers(n + 1)]] = True
        else:
            pick = rng.random(n) < object_prob
            if not pick.any():
                pick[rng.integers(n)] = True
        paste = torch.from_numpy(np.concatenate([[False], pick])[ids]).to(images.device)
        out_images[i] = torch.where(paste, src_img, out_images[i])
        out_labels[i] = torch.where(paste, src_lab, out_labels[i])
    return out_images, out_labels


MIXES = {"cutmix": cutmix, "copy_paste": copy_paste}


class BatchMix:
    """Apply one batch mix with probability p per batch: ``images, labels = BatchMix("cutmix", 0.5)(images, labels)``.

    mix: "cutmix" | "copy_paste"; kwargs go to that function (alpha, box; classes, scale_range, flip,
    object_prob, destination, image_mode). The coin and the mix draw from ``generator`` (None: torch's global RNG).
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
