"""Image files in and out, safely: collecting inputs, validating arrays, naming outputs, writing them.

What prediction (``Predictor.predict_files``, the classifier's ``predict_files``, pseudo labels) guarantees
(docs/reliability.md, "nothing lost, nothing silently wrong"):

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
from .checkpoint import write_error

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
LOCK_NAME = ".contextseg.lock"
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


def bad_image_error(path, reason: str) -> ContextSegError:
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
