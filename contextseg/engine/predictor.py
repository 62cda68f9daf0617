"""Prediction on image files: label maps (class indices), colour maps and overlays.

What ``predict_files`` guarantees (docs/reliability.md, "nothing lost, nothing silently wrong"):

- It never writes over its inputs: an output folder that holds any of the input images is refused.
- One set of outputs per distinct image (the same file given twice counts once). Output names are the image's file
  stem (``x.jpg`` -> ``x.png``, ``x_color.png``, ``x_overlay.jpg``); when two inputs share a stem (``x.jpg`` and
  ``x.png``, or ``d1/x.png`` and ``d2/x.png``) each of them is named ``STEM_EXT`` (``x_jpg.png``, ``x_png.png``),
  and where that still clashes ``PARENT_STEM_EXT`` (``d1_x_png.png``); any clash left (e.g. an image named
  ``x_color.png`` beside ``x.png``) gets ``_2``, ``_3``, ... in input order (``output_stems``).
- Every file is written to a temp file in the output folder and renamed over the target (``save_image``), so a killed
  run leaves whole files only; stale temp files of a killed run are deleted at the next start.
- One writer per folder: ``OUT/.contextseg.lock`` (``FolderLock``) holds the writer's PID while it runs; a second run
  into the folder is refused while that process lives, a lock left by a dead process is taken over with a warning.
- Unreadable image files are named before anything is written (``skip_bad=True``: skipped and listed instead).
- Images above ``max_pixels`` run in sliding windows (``Predictor``), so a large photo does not exhaust memory.
"""
from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import eval_transform, read_image
from ..errors import ContextSegError
from ..models.ensemble import Ensemble
from ..models.multiscale import LEARNED_MERGES, MultiScale, configure_inference, sliding_window_inference
from ..models.resize import align_corners_of, resize
from ..onnx_graph import is_onnx
from ..visualize import colorize, default_palette, heatmap, overlay
from .backends import CHOICES, prepare
from .checkpoint import load_checkpoint, load_model, model_from_checkpoint, remove_stale_temps, write_error
from .runtime import autocast, select_device

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
LOCK_NAME = ".contextseg.lock"
MAX_PIXELS = 4_000_000  # above this (2000 x 2000) predict runs sliding windows (--max-pixels)
DEFAULT_WINDOW = (1024, 1024)  # the sliding window when the training crop is unknown (an .onnx file, a bare module)
PREDICT_SUFFIXES = ("", "_color", "_overlay", "_saliency")  # what predict_files writes per image: STEM + these


# ----------------------------------------------------------------------------- inputs


def collect_images(inputs) -> list[Path]:
    """Expand files and folders (not recursive) into a list of image paths (each folder's sorted); a file given twice
    (also through its folder, or a link to it) is listed once."""
    paths: list[Path] = []
    seen: set[str] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise ContextSegError(f"folder {str(p)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif p.is_file():
            found = [p]
        else:
            raise ContextSegError(f"input {str(p)!r} does not exist; give image files or folders of images")
        for q in found:
            key = os.path.realpath(q)
            if key not in seen:
                seen.add(key)
                paths.append(q)
    return paths


def unreadable_images(paths) -> list[tuple[Path, str]]:
    """(path, reason) of every file PIL cannot even open (random bytes, another format), from the headers alone;
    damaged pixel data shows only when the image is decoded (``predict_files`` handles both)."""
    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.size  # noqa: B018 (the header is parsed by open)
        except Exception as exc:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
            bad.append((Path(p), _reason(exc, p)))
    return bad


def _reason(exc: BaseException, path) -> str:
    """The first line of ``exc``'s message, without the path (the messages name it beside)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    for form in (f" {str(path)!r}", f" '{path}'", str(path)):
        text = text.replace(form, "")
    return text[:200] or exc.__class__.__name__


def skipped_note(skipped) -> str:
    """'skipped N unreadable image(s): PATH (why); ...' or '' when none."""
    if not skipped:
        return ""
    n = len(skipped)
    return f"skipped {n} unreadable image{'s' if n != 1 else ''}: " + "; ".join(f"{p} ({why})" for p, why in skipped)


def _bad_image_error(path, reason: str) -> ContextSegError:
    return ContextSegError(f"cannot read image {path} ({reason}); replace or remove it, or pass --skip-bad to "
                           f"predict the other images and list the unreadable ones")


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


def as_image_array(image, channels: int = 3) -> np.ndarray:
    """The Python API's image check: (H, W, C) uint8 (0..255) is used as it is; a float array must hold values in
    [0, 1] and is scaled by 255 (returned as float32 0..255). Anything else is one ContextSegError naming the fix:
    not a numpy array, an empty array, (H, W) grayscale (not converted: repeat it with np.stack([a] * 3, -1)),
    another channel count, NaN or infinite values, floats outside [0, 1] (e.g. 0..255 floats), bool or integer
    dtypes other than uint8."""
    fix = f"give a numpy array (H, W, {channels}) uint8, e.g. np.asarray(Image.open(path).convert('RGB'))"
    if not isinstance(image, np.ndarray):
        extra = " (a tensor: .numpy() of its (H, W, C) uint8 form)" if torch.is_tensor(image) else ""
        raise ContextSegError(f"image is a {type(image).__name__}, not a numpy array; {fix}{extra}")
    if image.size == 0:
        raise ContextSegError(f"image of shape {image.shape} is empty; {fix}")
    if image.ndim == 2:
        raise ContextSegError(f"image of shape {image.shape} is grayscale (H, W); this model takes (H, W, {channels}) "
                              f"arrays: repeat the channel with np.stack([a] * {channels}, -1)")
    if image.ndim != 3 or image.shape[2] != channels:
        hint = ""
        if image.ndim == 3 and image.shape[2] == 4 and channels == 3:
            hint = ": drop the alpha channel with a[..., :3]"
        elif image.ndim == 3 and image.shape[0] == channels:
            hint = ": a (C, H, W) array? use a.transpose(1, 2, 0)"
        raise ContextSegError(f"image of shape {image.shape} given; this model takes (H, W, {channels}) arrays{hint}")
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool or not np.issubdtype(image.dtype, np.floating):
        raise ContextSegError(f"image of dtype {image.dtype}; give uint8 (0..255) or float in [0, 1]: "
                              f"a.astype(np.uint8) if its values are 0..255")
    finite = np.isfinite(image)
    if not finite.all():
        raise ContextSegError(f"image holds {int((~finite).sum())} NaN or infinite values; fix the array "
                              f"(e.g. np.nan_to_num) before predicting")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        raise ContextSegError(f"float image with values in [{lo:g}, {hi:g}]; float images must be in [0, 1] (they are "
                              f"scaled by 255): for 0..255 values give a.round().astype(np.uint8), or a / 255")
    return image.astype(np.float32) * 255.0


# ----------------------------------------------------------------------------- outputs


def output_stems(paths, suffixes=PREDICT_SUFFIXES) -> list[str]:
    """One output stem per image, none of whose names (STEM + each of ``suffixes``) clashes with another's,
    case-insensitively: the file stem; STEM_EXT for every image whose stem another input shares (x.jpg, x.png ->
    x_jpg, x_png); PARENT_STEM_EXT where that still clashes (d1/x.png, d2/x.png -> d1_x_png, d2_x_png); then _2, _3,
    ... in input order for whatever clash is left (e.g. an image x_color.png beside x.png)."""
    paths = [Path(p) for p in paths]

    def shared(names):
        counts = Counter(n.casefold() for n in names)
        return [counts[n.casefold()] > 1 for n in names]

    names = [p.stem for p in paths]
    names = [f"{p.stem}_{p.suffix.lstrip('.')}" if s and p.suffix else n for p, n, s in zip(paths, names, shared(names))]
    names = [f"{p.resolve().parent.name}_{n}" if s else n for p, n, s in zip(paths, names, shared(names))]
    taken: set[str] = set()
    stems = []
    for name in names:
        candidate, n = name, 1
        while any((candidate + s).casefold() in taken for s in suffixes):
            n += 1
            candidate = f"{name}_{n}"
        taken.update((candidate + s).casefold() for s in suffixes)
        stems.append(candidate)
    return stems


def check_output_folder(out_dir, images, option: str = "--out") -> Path:
    """``out_dir`` as a Path, or one ContextSegError: it is a file, or it is the folder of an input image (outputs
    would sit among, and could overwrite, the inputs)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ContextSegError(f"{option} {out} is a file; give a folder (it is created when missing)")
    target = os.path.realpath(out)
    held = [p for p in images if os.path.realpath(Path(p).parent) == target]
    if held:
        raise ContextSegError(f"{option} {out} holds the input images (e.g. {Path(held[0]).name}); choose another "
                              f"folder, e.g. {out / 'predictions'}")
    return out


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None


@contextmanager
def atomic_file(path, mode: str = "wb"):
    """Open a temp file beside ``path`` (``.NAME.RANDOM.tmp``, permissions as the umask gives) for writing; on a
    clean exit it is renamed over ``path``, on an error it is deleted (``path`` untouched). A full disk or an
    unwritable folder is one ContextSegError naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def save_image(image, path, **params) -> Path:
    """Write an array (or a PIL image) to ``path`` in the format of its suffix, through a temp file + rename."""
    path = Path(path)
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ContextSegError(f"no image format for {path.name!r}; use .png or .jpg")
    with atomic_file(path) as f:
        image.save(f, format=fmt, **params)
    return path


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file + rename."""
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


class FolderLock:
    """One writer per output folder: FOLDER/.contextseg.lock, created exclusively (O_CREAT | O_EXCL) and holding
    "PID HOST"; removed on exit, also after an error. A folder whose lock names a live process (or one on another
    host, which cannot be checked) is refused with one ContextSegError naming the lock file; a lock whose process is
    gone (a killed run) is taken over with a warning on stderr.

        with FolderLock(out_dir, "predict"):
            ...
    """

    def __init__(self, folder, command: str = "predict", option: str = "--out"):
        self.folder, self.command, self.option = Path(folder), command, option
        self.path = self.folder / LOCK_NAME
        self.held = False

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        for attempt in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, text = lock_holder(self.path)
                if holder is not None or attempt == 2:
                    raise ContextSegError(
                        f"{self.path} is held by {holder or 'another process'}: another contextseg run writes into "
                        f"{self.folder}; wait for it to end or choose another {self.option} (delete the lock file "
                        f"only if no contextseg run uses that folder)") from None
                try:
                    if self.path.read_text() == text:  # still the same stale lock: take it over
                        self.path.unlink()
                        print(f"contextseg {self.command}: warning: took over the stale lock {self.path} "
                              f"({text.split()[0] if text.split() else 'empty'}: no such process; a killed run)",
                              file=sys.stderr)
                except FileNotFoundError:
                    pass
                continue
            except OSError as exc:
                raise write_error(self.path, exc) from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            self.held = True
            return

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def lock_holder(path: Path, grace_s: float = 60.0) -> tuple[str | None, str]:
    """(who holds the lock, e.g. "PID 123", or None when it is stale, the lock file's text)."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None, ""
    except OSError:
        return "an unreadable lock", ""
    words = text.split()
    try:
        pid = int(words[0])
    except (IndexError, ValueError):  # empty: a process between creating the file and writing its PID
        return ("a process that is starting" if age < grace_s else None), text
    host = words[1] if len(words) > 1 else socket.gethostname()
    if host != socket.gethostname():
        return f"PID {pid} on {host}", text
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None, text
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return None, text
    return f"PID {pid} (running)", text


# ----------------------------------------------------------------------------- memory


def crop_of(ckpt: dict):
    """The training crop (h, w) a checkpoint's config names, else None."""
    crop = (((ckpt or {}).get("config") or {}).get("data") or {}).get("crop_size")
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
            raise _bad_image_error(*bad[0])
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
                        raise _bad_image_error(path, why) from None
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
