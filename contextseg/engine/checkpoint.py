"""Checkpoints: written atomically (temp file in the same folder, fsync, rename) and read with
`torch.load(weights_only=True)`. A checkpoint records the model's constructor arguments, so
`load_model(path)` rebuilds the model with no config file.

Layout: {"model", "model_args", "optimizer", "scheduler", "epoch", "step", "config", "metrics",
"rng", "classes", "palette", "format"}.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ContextSegError, unreadable_file
from ..models import create_model
from ..models.resize import LEGACY_ALIGN_CORNERS
from ..onnx_graph import OnnxModel, is_onnx
from .zoo import is_zoo, zoo_checkpoint

FORMAT = "contextseg-checkpoint-v1"


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temp file beside `path`, then rename: a crash never leaves a half-written file. A full disk
    or a folder that cannot be written is one ContextSegError naming the path (the earlier file stays intact)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) or "unexpected pos" in str(exc) or "file write failed" in str(exc):
            raise write_error(path, exc) from None  # torch reports a full disk as "unexpected pos ..."
        raise


def write_error(path: Path, exc: BaseException) -> ContextSegError:
    """One line for a file that cannot be written: full disk, no permission, a file where a folder should be."""
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
    if "unexpected pos" in str(exc) or "file write failed" in str(exc) or getattr(exc, "errno", None) == 28:
        reason = "no space left on the device"
    keep = " (the previous one is intact)" if path.exists() else ""
    return ContextSegError(f"cannot write {str(path)!r}: {reason}{keep}; free space, fix the folder's permissions "
                           f"or choose another output folder")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files a killed atomic_save left in ``folder``; returns them."""
    stale = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), np_state[2], np_state[3], np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A contextseg checkpoint (read with ``weights_only``), or a zoo model ("zoo:NAME") as one."""
    if is_zoo(path):
        return zoo_checkpoint(path)
    path = Path(path)
    if not path.is_file():
        raise ContextSegError(f"checkpoint {str(path)!r} not found (train one with `contextseg train CONFIG`; "
                              f"it writes OUTPUT_DIR/best.pt and OUTPUT_DIR/last.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file, or pickled objects weights_only refuses
        raise unreadable_file(path, exc) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ContextSegError(f"{str(path)!r} is not a contextseg checkpoint (no 'model' entry); "
                              f"for official weights use contextseg.load_official(...)")
    return ckpt


def load_state_dict_checked(model: torch.nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Strict load with one clear message for missing/unexpected keys and shape mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        lines = []
        if shapes:
            lines.append("shape mismatches (e.g. a different num_classes or backbone): " + "; ".join(shapes[:4]))
        if missing:
            lines.append(f"{len(missing)} missing keys, e.g. {missing[:3]}")
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
        raise ContextSegError(f"{source} does not fit this model: " + " | ".join(lines)
                              + ". Build the model the checkpoint was trained with (contextseg.load_model(path) does).")
    model.load_state_dict(state)


def model_args(ckpt: dict) -> dict:
    """The ``create_model`` arguments a checkpoint was saved with ({} when it has none). Checkpoints written before
    ``align_corners`` was a model setting were trained with False: they get it, so they predict as they were trained."""
    args = dict(ckpt.get("model_args") or {})
    if args:
        args.setdefault("align_corners", LEGACY_ALIGN_CORNERS)
    return args


def training_crop(ckpt: dict) -> list | None:
    """The (H, W) crop a checkpoint's run trained on (its config's data.crop_size), None when it has no config."""
    return ((ckpt.get("config") or {}).get("data") or {}).get("crop_size")


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a model from a contextseg checkpoint alone and load its weights (eval mode). An ``.onnx`` file
    (``contextseg export``) gives an ``OnnxModel``: onnxruntime behind the same contract, on the CPU."""
    if is_onnx(path):
        return OnnxModel(path)
    return model_from_checkpoint(load_checkpoint(path), device, source=str(path))


def model_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu", source: str = "checkpoint"):
    """The model of a loaded checkpoint dict (``load_checkpoint``), with its weights, classes and palette, in eval
    mode on ``device``."""
    if "model_args" not in ckpt:
        raise ContextSegError(f"checkpoint {source!r} has no 'model_args'; build the model with "
                              f"create_model(...) and load ckpt['model'] into it")
    model = create_model(**model_args(ckpt))
    load_state_dict_checked(model, ckpt["model"], source=f"checkpoint {source!r}")
    model.classes = ckpt.get("classes")
    model.palette = ckpt.get("palette")
    return model.to(device).eval()
