"""Prediction on image files: label maps (class indices), colour maps and overlays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import eval_transform, read_image
from ..errors import ContextSegError
from ..models.ensemble import Ensemble
from ..models.multiscale import LEARNED_MERGES, MultiScale, configure_inference
from ..models.resize import align_corners_of, resize
from ..visualize import colorize, default_palette, heatmap, overlay
from .backends import CHOICES, prepare
from .checkpoint import load_model
from .runtime import autocast, select_device

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def collect_images(inputs) -> list[Path]:
    """Expand files and folders (not recursive) into a sorted list of image paths."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ContextSegError(f"folder {str(p)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise ContextSegError(f"input {str(p)!r} does not exist; give image files or folders of images")
    return paths


def image_batches(inputs, size=None, count: int = 16, offset: int = 0) -> list[torch.Tensor]:
    """Images of ``inputs`` (files or folders, sorted), ``offset`` to ``offset + count``, each resized to ``size``
    (H, W) if given and normalised as for evaluation: a list of (1, C, H, W) float tensors (int8 calibration,
    benchmark inputs)."""
    transform = eval_transform()
    batches = []
    for path in collect_images(inputs)[offset:offset + count]:
        image = read_image(path)
        if size is not None:
            image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
        batches.append(transform(image, None)[0].unsqueeze(0).float())
    return batches


class Predictor:
    """Loads a model (a checkpoint path or an nn.Module, or a list of them: an ensemble that averages the
    members' softmax probabilities, see contextseg.models.ensemble) and predicts per-pixel classes.

        pred = Predictor("runs/camvid/best.pt")
        label = pred.predict(image)            # (H, W) int64 from an (H, W, 3) uint8 RGB array
        probs = pred.predict_proba(image)      # (K, H, W) float32 softmax

    Test-time options (``contextseg.models.multiscale.configure_inference``): ``scales=[0.5, 1.0, 1.5]``,
    ``merge="avg"|"max"|"attention"|"hierarchical"``, ``flip=True``, ``window=(h, w)``, ``stride=(h, w)``; none given
    = the model as trained (single scale for a plain checkpoint).

    ``backend`` (``contextseg.engine.backends``): None runs bf16 autocast where the hardware has it natively, else
    the exact "torch" backend (folded BatchNorm + channels_last); "auto" probes the exact backends (torch,
    onnxruntime, openvino) once per model and image size and keeps the fastest; "eager" is the model as is under
    ``amp``. The backend is built at the first image (its size is the example); ``int8`` needs ``calibration``
    (normalised (1, C, H, W) images). Ensembles and ``save_attention`` run eager.
    """

    def __init__(self, model, device: str = "auto", amp: str = "auto", classes=None, palette=None, scales=None,
                 merge: str | None = None, flip: bool = False, window=None, stride=None, backend: str | None = None,
                 calibration=None):
        self.device = select_device(device)
        members = list(model) if isinstance(model, (list, tuple)) else [model]
        names = [str(m) if isinstance(m, (str, Path)) else f"model {i}" for i, m in enumerate(members)]
        members = [load_model(m, device=self.device) if isinstance(m, (str, Path)) else m for m in members]
        if any(getattr(getattr(m, "head", None), "task", None) == "classification" for m in members):
            raise ContextSegError("Predictor makes label maps; for an image classifier use "
                                  "contextseg.tasks.classification.predict_files (or `contextseg predict`)")
        members = [configure_inference(m, scales=scales, merge=merge, flip=flip, window=window, stride=stride)
                   for m in members]
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

    @property
    def scales(self) -> list[float] | None:
        """The pyramid's scales (ascending) when the model merges several, else None."""
        return list(self.model.scales) if isinstance(self.model, MultiScale) else None

    @torch.no_grad()
    def predict_outputs(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """{"probs": (K, H, W) softmax, ["scale_weights": (S, H, W)]} at the image's size, on the CPU; the scale
        weights (attention merges only) are per pixel the weight of each scale in ``self.scales`` (sum 1)."""
        expected = getattr(self.model, "in_channels", 3)
        if image.ndim != 3 or image.shape[2] != expected:
            raise ContextSegError(f"image of shape {image.shape} given; this model takes (H, W, {expected}) arrays")
        x, _ = self.transform(image, None)
        x = x.unsqueeze(0).to(self.device)
        model, amp = self.runner(x)
        with autocast(self.device, amp):
            out = model(x)
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
                      save_attention: bool = False) -> list[Path]:
        """For each image write STEM.png (class indices), STEM_color.png and STEM_overlay.jpg into out_dir (and for a
        saliency model STEM_saliency.png, the probability x 255); with
        ``save_attention``, also STEM_attn_s0.5.png, ... : each scale's weight map as a heatmap (viridis, 0 to 1)."""
        if save_attention and isinstance(self.model, Ensemble):
            raise ContextSegError("--save-attention takes one checkpoint; an ensemble has one attention map per "
                                  "member: predict with each checkpoint alone to see them")
        if save_attention and not (isinstance(self.model, MultiScale) and self.model.merge in LEARNED_MERGES):
            raise ContextSegError("--save-attention needs a learned merge over scales: a checkpoint trained with "
                                  "merge attention or hierarchical (optionally with --merge and --scales)")
        from tqdm import tqdm

        if save_attention:  # the attention maps come from the eager model's extra outputs
            self._runner = (self.model, self.amp)

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in tqdm(collect_images(inputs), desc="predict", disable=not progress, dynamic_ncols=True):
            image = read_image(path)
            outputs = self.predict_outputs(image)
            label = outputs["probs"].argmax(0).numpy().astype(np.uint8)
            if save_attention:
                for scale, weights in zip(self.scales, outputs["scale_weights"].numpy()):
                    Image.fromarray(heatmap(weights)).save(out_dir / f"{path.stem}_attn_s{scale!r}.png")
            Image.fromarray(label).save(out_dir / f"{path.stem}.png")
            if self.num_classes == 1:  # saliency: also the grey-level map (0..255) the SOD metrics read
                saliency = (outputs["probs"][1].numpy() * 255).round().astype(np.uint8)
                Image.fromarray(saliency).save(out_dir / f"{path.stem}_saliency.png")
            Image.fromarray(colorize(label, self.palette)).save(out_dir / f"{path.stem}_color.png")
            Image.fromarray(overlay(image, label, self.palette, alpha)).save(out_dir / f"{path.stem}_overlay.jpg", quality=92)
            written.append(out_dir / f"{path.stem}.png")
        return written
