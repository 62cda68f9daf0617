"""Prediction on images: label maps (class indices), colour maps and overlays, through any inference backend, with
sliding windows above ``max_pixels`` so a large photo does not exhaust memory. The file handling (inputs, output
names, atomic writes, the folder lock) is engine/outputs.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import eval_transform, read_image
from ..errors import ContextSegError
from ..models.ensemble import Ensemble
from ..models.multiscale import LEARNED_MERGES, MultiScale, configure_inference, sliding_window_inference
from ..models.resize import align_corners_of, resize
from ..onnx_graph import is_onnx
from ..visualize import colorize, default_palette, heatmap, overlay
from .backends import CHOICES, prepare
from .checkpoint import load_checkpoint, load_model, model_from_checkpoint, remove_stale_temps, training_crop
from .outputs import (PREDICT_SUFFIXES, FolderLock, as_image_array, bad_image_error, check_output_folder,
                      collect_images, make_folder, output_stems, save_image, unreadable_images)
from .runtime import autocast, select_device

MAX_PIXELS = 4_000_000  # above this (2000 x 2000) predict runs sliding windows (--max-pixels)
DEFAULT_WINDOW = (1024, 1024)  # the sliding window when the training crop is unknown (an .onnx file, a bare module)


# ----------------------------------------------------------------------------- memory


def crop_of(ckpt: dict):
    """The training crop (h, w) a checkpoint's config names, else None."""
    crop = training_crop(ckpt or {})
    try:
        h, w = (int(c) for c in crop)
    except (TypeError, ValueError):
        return None
    return (h, w) if h > 0 and w > 0 else None


@torch.no_grad()
def activation_bytes_per_pixel(model: torch.nn.Module, channels: int = 3, device="cpu", size: int = 64):
    """Rough memory of a whole-image forward per input pixel, in bytes: the sum of every layer's output (fp32) on a
    ``size`` x ``size`` probe, divided by its pixels. An upper bound (layers' outputs are freed as the forward goes on),
    measured once; None for a model without parameters (an ONNX file) where the layers cannot be seen."""
    if not any(p.numel() for p in model.parameters()):
        return None
    outputs, total = [], [0]
    seen: set[int] = set()

    def count(_module, _inputs, out):
        items = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else [out]
        for t in items:
            if torch.is_tensor(t) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                outputs.append(t)  # kept alive, so no address is reused while counting
                total[0] += t.numel() * 4

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, channels, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total[0] / (size * size)


def _gigabytes(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MB"


# ----------------------------------------------------------------------------- the predictor


class Predictor:
    """Loads a model (a checkpoint path or an nn.Module, or a list of them: an ensemble that averages the
    members' softmax probabilities, see contextseg.models.ensemble) and predicts per-pixel classes.

        pred = Predictor("runs/camvid/best.pt")
        label = pred.predict(image)            # (H, W) int64 from an (H, W, 3) uint8 RGB array
        probs = pred.predict_proba(image)      # (K, H, W) float32 softmax

    Images (``as_image_array``): (H, W, 3) uint8 RGB as they are; float arrays must hold values in [0, 1] and are
    scaled by 255; anything else (a list, (H, W) grayscale, 0..255 floats, NaN, bool, int64, ...) is a
    ContextSegError that names the fix.

    Test-time options (``contextseg.models.multiscale.configure_inference``): ``scales=[0.5, 1.0, 1.5]``,
    ``merge="avg"|"max"|"attention"|"hierarchical"``, ``flip=True``, ``window=(h, w)``, ``stride=(h, w)``; none given
    = the model as trained (single scale for a plain checkpoint).

    Large images: an image of more than ``max_pixels`` pixels (default 4,000,000 = 2000 x 2000; None or 0: never)
    runs in sliding windows of the training crop (``train_crop``, else read from the checkpoint; 1024 x 1024 when
    unknown) every 2/3 of a window (or ``stride``), the windows' logits averaged where they overlap, and one message
    says so with the memory a whole-image forward would hold (``activation_bytes_per_pixel`` x pixels).
    ``window="auto"`` runs every image that way.

    ``backend`` (``contextseg.engine.backends``): None runs bf16 autocast where the hardware has it natively, else
    the exact "torch" backend (folded BatchNorm + channels_last); "auto" probes the exact backends (torch,
    onnxruntime, openvino) once per model and image size and keeps the fastest; "eager" is the model as is under
    ``amp``. The backend is built at the first image (its size is the example; a window for windowed images);
    ``int8`` needs ``calibration`` (normalised (1, C, H, W) images). Ensembles and ``save_attention`` run eager.
    """

    def __init__(self, model, device: str = "auto", amp: str = "auto", classes=None, palette=None, scales=None,
                 merge: str | None = None, flip: bool = False, window=None, stride=None, backend: str | None = None,
                 calibration=None, max_pixels: int | None = MAX_PIXELS, train_crop=None):
        self.device = select_device(device)
        auto = isinstance(window, str)
        if auto and window != "auto":
            raise ContextSegError(f"window must be (h, w) or 'auto', got {window!r}")
        members = list(model) if isinstance(model, (list, tuple)) else [model]
        names = [str(m) if isinstance(m, (str, Path)) else f"model {i}" for i, m in enumerate(members)]
        loaded, crops = [], []
        for m in members:
            if isinstance(m, (str, Path)) and not is_onnx(m):
                ckpt = load_checkpoint(m)
                loaded.append(model_from_checkpoint(ckpt, self.device, source=str(m)))
                crops.append(crop_of(ckpt))
            else:
                loaded.append(load_model(m, device=self.device) if isinstance(m, (str, Path)) else m)
        members = loaded
        if any(getattr(getattr(m, "head", None), "task", None) == "classification" for m in members):
            raise ContextSegError("Predictor makes label maps; for an image classifier use "
                                  "contextseg.tasks.classification.predict_files (or `contextseg predict`)")
        members = [configure_inference(m, scales=scales, merge=merge, flip=flip, window=None if auto else window,
                                       stride=None if auto else stride) for m in members]
        model = members[0] if len(members) == 1 else Ensemble(members, names=names)
        self.model = model.to(self.device).eval()
        self.amp = amp
        if backend is not None and backend not in CHOICES:
            raise ContextSegError(f"unknown backend {backend!r}; choose one of {', '.join(CHOICES)}")
        self.backend = "eager" if isinstance(model, Ensemble) or getattr(model, "session", None) else backend
        self._runner = None  # (the model to call, its amp), built at the first image
        self.calibration = calibration  # normalised (1, C, H, W) images for backend int8
        self.num_classes = model.num_classes
        labels = 2 if self.num_classes == 1 else self.num_classes  # a one-logit saliency model labels 0 / 1
        self.classes = classes or getattr(model, "classes", None) or [str(k) for k in range(labels)]
        self.palette = [tuple(c) for c in (palette or getattr(model, "palette", None) or default_palette(labels))]
        self.transform = eval_transform()
        # sliding windows chosen here (window="auto", or images above max_pixels); a model windowed by
        # configure_inference (window=(h, w)) runs its own
        self.window_mode = "auto" if auto else None
        self.max_pixels = max_pixels if max_pixels and max_pixels > 0 else None
        if isinstance(self.model, MultiScale) and self.model.window is not None:
            self.max_pixels = None
        self.train_crop = tuple(train_crop) if train_crop else next((c for c in crops if c), None)
        wh, ww = self.train_crop or DEFAULT_WINDOW
        self.auto_window = (int(wh), int(ww))
        self.auto_stride = tuple(stride) if auto and stride is not None else (max(1, round(2 * wh / 3)),
                                                                              max(1, round(2 * ww / 3)))
        self._announced = False
        self._bytes_per_pixel = "unmeasured"
        self.skipped: list[tuple[Path, str]] = []  # (path, why) of the images the last predict_files skipped

    @property
    def scales(self) -> list[float] | None:
        """The pyramid's scales (ascending) when the model merges several, else None."""
        return list(self.model.scales) if isinstance(self.model, MultiScale) else None

    def bytes_per_pixel(self) -> float | None:
        """``activation_bytes_per_pixel`` of the model, measured at the first call (None when unknown)."""
        if self._bytes_per_pixel == "unmeasured":
            try:
                self._bytes_per_pixel = activation_bytes_per_pixel(self.model, getattr(self.model, "in_channels", 3),
                                                                   self.device)
            except Exception:  # a model the probe cannot run: the message goes without the estimate
                self._bytes_per_pixel = None
        return self._bytes_per_pixel

    def windows_for(self, size) -> tuple | None:
        """((h, w) window, (h, w) stride) of the sliding windows an image of ``size`` (H, W) runs in, or None (the
        whole image, or the model's own windows). Says so once per Predictor."""
        pixels = int(size[0]) * int(size[1])
        large = self.max_pixels is not None and pixels > self.max_pixels
        if self.window_mode != "auto" and not large:
            return None
        if not self._announced:
            self._announced = True
            crop = "the training crop" if self.train_crop else "the training crop is unknown"
            how = (f"sliding windows of {self.auto_window[0]}x{self.auto_window[1]} ({crop}), stride "
                   f"{self.auto_stride[0]}x{self.auto_stride[1]}")
            if self.window_mode == "auto":
                print(f"predict: --window auto: every image runs in {how}")
            else:
                per_pixel = self.bytes_per_pixel()
                need = f"; a whole-image forward would hold up to ~{_gigabytes(per_pixel * pixels)}" if per_pixel else ""
                print(f"predict: a {size[1]}x{size[0]} image ({pixels:,} pixels) is above --max-pixels "
                      f"{self.max_pixels:,}{need}: images above it run in {how}")
        return self.auto_window, self.auto_stride

    @torch.no_grad()
    def predict_outputs(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """{"probs": (K, H, W) softmax, ["scale_weights": (S, H, W)]} at the image's size, on the CPU; the scale
        weights (attention merges, whole-image inference only) are per pixel the weight of each scale in
        ``self.scales`` (sum 1)."""
        image = as_image_array(image, getattr(self.model, "in_channels", 3))
        x, _ = self.transform(image, None)
        x = x.unsqueeze(0).float().to(self.device)
        windows = self.windows_for(image.shape[:2])
        if windows is None:
            model, amp = self.runner(x)
            with autocast(self.device, amp):
                out = model(x)
        else:
            (wh, ww), stride = windows
            model, amp = self.runner(x[..., :wh, :ww])
            channels = self.num_classes
            with autocast(self.device, amp):
                out = {"out": sliding_window_inference(model, x, channels, (wh, ww), stride,
                                                       align_corners_of(self.model))}
        size, ac = image.shape[:2], align_corners_of(self.model)
        logits = resize(out["out"].float(), size, ac)
        if logits.shape[1] == 1:  # a saliency model: one logit, probabilities of (background, salient)
            p = torch.sigmoid(logits)
            result = {"probs": torch.cat([1 - p, p], dim=1)[0].cpu()}
        else:
            result = {"probs": logits.softmax(1)[0].cpu()}
        if "scale_weights" in out:
            weights = resize(out["scale_weights"].float(), size, ac)
            result["scale_weights"] = weights[0].cpu()
        return result

    def runner(self, example: torch.Tensor) -> tuple:
        """(the model to call, its autocast precision): the backend, built for ``example``'s size once."""
        if self._runner is None:
            self._runner = prepare(self.model, self.backend, example, self.amp, self.device, self.calibration)
            self.backend = getattr(self._runner[0], "backend", "eager")
        return self._runner

    def predict_proba(self, image: np.ndarray) -> torch.Tensor:
        return self.predict_outputs(image)["probs"]

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predict_proba(image).argmax(0).numpy()

    def predict_files(self, inputs, out_dir: str | Path, alpha: float = 0.5, progress: bool = True,
                      save_attention: bool = False, skip_bad: bool = False) -> list[Path]:
        """For each distinct image write STEM.png (class indices), STEM_color.png and STEM_overlay.jpg into out_dir
        (and for a saliency model STEM_saliency.png, the probability x 255); with ``save_attention``, also
        STEM_attn_s0.5.png, ... : each scale's weight map as a heatmap (viridis, 0 to 1). Output names, the refusal
        of a folder that holds the inputs, temp + rename writes and the folder lock: see the module docstring.

        Files PIL cannot read are named before anything is written (ContextSegError); with ``skip_bad`` they are
        skipped and listed in ``self.skipped`` ((path, why) pairs) instead. Returns the label maps written."""
        if save_attention and isinstance(self.model, Ensemble):
            raise ContextSegError("--save-attention takes one checkpoint; an ensemble has one attention map per "
                                  "member: predict with each checkpoint alone to see them")
        if save_attention and not (isinstance(self.model, MultiScale) and self.model.merge in LEARNED_MERGES):
            raise ContextSegError("--save-attention needs a learned merge over scales: a checkpoint trained with "
                                  "merge attention or hierarchical (optionally with --merge and --scales)")
        from tqdm import tqdm

        images = collect_images(inputs)
        out_dir = check_output_folder(out_dir, images)
        bad = unreadable_images(images)
        if bad and not skip_bad:
            raise bad_image_error(*bad[0])
        self.skipped = list(bad)
        skip = {p for p, _ in bad}
        suffixes = PREDICT_SUFFIXES + tuple(f"_attn_s{s!r}" for s in (self.scales or []) if save_attention)
        stems = output_stems(images, suffixes)
        if save_attention:  # the attention maps come from the eager model's extra outputs
            self._runner = (self.model, self.amp)

        make_folder(out_dir)
        written = []
        with FolderLock(out_dir, "predict"):
            remove_stale_temps(out_dir)  # of a killed run
            todo = [(p, s) for p, s in zip(images, stems) if p not in skip]
            for path, stem in tqdm(todo, desc="predict", disable=not progress, dynamic_ncols=True):
                try:
                    image = read_image(path)
                except ContextSegError as exc:  # damaged pixel data, or gone since it was listed
                    why = str(exc).split(f"{path}: ", 1)[-1].removesuffix(" Is it a valid image file?").rstrip(".")
                    if not skip_bad:
                        raise bad_image_error(path, why) from None
                    self.skipped.append((path, why))
                    continue
                outputs = self.predict_outputs(image)
                label = outputs["probs"].argmax(0).numpy().astype(np.uint8)
                if save_attention:
                    if "scale_weights" not in outputs:
                        raise ContextSegError(f"--save-attention needs whole-image inference, but {path} "
                                              f"({image.shape[1]}x{image.shape[0]}) ran in sliding windows; raise "
                                              f"--max-pixels above {image.shape[0] * image.shape[1]}")
                    for scale, weights in zip(self.scales, outputs["scale_weights"].numpy()):
                        save_image(heatmap(weights), out_dir / f"{stem}_attn_s{scale!r}.png")
                save_image(label, out_dir / f"{stem}.png")
                if self.num_classes == 1:  # saliency: also the grey-level map (0..255) the SOD metrics read
                    saliency = (outputs["probs"][1].numpy() * 255).round().astype(np.uint8)
                    save_image(saliency, out_dir / f"{stem}_saliency.png")
                save_image(colorize(label, self.palette), out_dir / f"{stem}_color.png")
                save_image(overlay(image, label, self.palette, alpha), out_dir / f"{stem}_overlay.jpg", quality=92)
                written.append(out_dir / f"{stem}.png")
        return written
