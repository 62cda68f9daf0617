"""Adding a trained model to the zoo (``contextseg zoo add``): weights to safetensors, metrics measured, samples shipped.

    contextseg zoo add camvid-ocr --checkpoint runs/camvid/best.pt --config configs/camvid/ocr_hrnetv2_w18s_v2.yaml \
        --command "contextseg train configs/camvid/ocr_hrnetv2_w18s_v2.yaml"

1. The checkpoint is evaluated on its config's validation split in fp32 (``train.amp=none``, eager: the same numbers
   on every CPU), and again with its weights rounded through float16; float16 is stored when the task's key metric
   moves by less than 0.1 point (``half="auto"``), float32 otherwise.
2. The weights go to ``zoo/NAME.safetensors``; the entry (constructor arguments, classes, palette, normalisation,
   both evaluations, the training command and config, machine and wall time from the checkpoint's run, sha256)
   to ``zoo/manifest.json``.
3. A few validation images with their labels are copied to ``zoo/samples/NAME/`` as a folder dataset of the task
   (``folder``, ``saliency_folder``, ``image_folder``) and the zoo model is evaluated on them: the tests check that
   every entry still reproduces these numbers.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .config import config_from_dict, load_config
from .data import build_dataset, eval_transform
from .data.transforms import MEAN, STD
from .engine.checkpoint import atomic_save, load_checkpoint
from .engine.env_report import environment
from .engine.hardware import named
from .engine.outputs import write_text
from .engine.zoo import manifest, rounded_state, save_weights, zoo_checkpoint, zoo_dir
from .errors import ContextSegError
from .models import create_model
from .tasks import task_for

SAMPLE_DATASETS = {"segmentation": "folder", "saliency": "saliency_folder", "classification": "image_folder"}
HALF_TOLERANCE = 0.001  # 0.1 point of a metric in [0, 1]


def evaluate_quietly(task, cfg, checkpoint: str) -> dict:
    """The task's metrics of ``checkpoint`` on cfg's val split, fp32 eager, without the printed report."""
    with contextlib.redirect_stdout(io.StringIO()):
        return task.evaluate_checkpoint(cfg, checkpoint, progress=False, backend="eager")


def headline(task, metrics: dict) -> dict:
    keys = {"segmentation": ("mIoU", "pixel_acc"), "saliency": ("max_f", "mae", "s_measure"),
            "classification": ("top1", "top1_gap")}[task.name]
    return {k: metrics[k] for k in keys if k in metrics}


def write_samples(cfg, task, folder: Path, count: int) -> dict:
    """Copy ``count`` validation images (evenly spaced; classification: the first of each class) and their labels
    to ``folder`` as the task's folder dataset; returns the data section that reads them back."""
    d = cfg.data
    val = build_dataset(d.dataset, d.val_split, root=d.root, transform=eval_transform(), **dict(d.kwargs))
    if folder.exists():
        shutil.rmtree(folder)
    if task.name == "classification":
        picks = [val.targets.index(k) for k in range(val.num_classes) if k in val.targets]
    else:
        picks = sorted({int(i) for i in np.linspace(0, len(val) - 1, count)})
    for n, i in enumerate(picks):
        image, label = val.raw(i)
        source = Path(val.files[i]) if hasattr(val, "files") else None
        stem = f"{n:02d}_{source.stem if source else i}"
        if task.name == "classification":
            target = folder / "val" / val.classes[int(label)]
        else:
            target = folder / "val" / "images"
            mask = np.where(np.asarray(label) == 1, 255, 0) if task.name == "saliency" else np.asarray(label)
            (folder / "val" / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8)).save(folder / "val" / "masks" / f"{stem}.png")
        target.mkdir(parents=True, exist_ok=True)
        if source is not None and source.is_file() and source.suffix.lower() in (".png", ".jpg", ".jpeg"):
            shutil.copyfile(source, target / f"{stem}{source.suffix.lower()}")  # the file as it is, no re-encoding
        else:
            Image.fromarray(image).save(target / f"{stem}.png")
    kwargs = {"classes": list(val.classes)} if task.name != "saliency" else {}
    return {"dataset": SAMPLE_DATASETS[task.name], "val_split": "val", "kwargs": kwargs}


def sample_config(entry: dict, root: Path):
    """The entry's training config reading its shipped samples (fp32)."""
    values = json.loads(json.dumps(entry["config"]))
    s = entry["samples"]
    values["data"].update({"dataset": s["dataset"], "root": str(root / s["root"]), "val_split": s["val_split"],
                           "kwargs": s["kwargs"]})
    values["train"]["amp"] = "none"
    return config_from_dict(values)


def served_at(ckpt: dict, scales) -> dict:
    """``ckpt`` with its model wrapped to run at fixed input ``scales`` (``MultiScale``, average merge; logits back
    at the input's size), e.g. ``[0.5]`` for a model trained on images read at half size: it then sees photos at
    the scale it learnt, whatever size they come in."""
    if "multiscale" in ckpt["model_args"]:
        raise ContextSegError("this checkpoint already runs at several scales (model.kwargs.multiscale); "
                              "drop --scales")
    model = create_model(**ckpt["model_args"], multiscale={"scales": [float(s) for s in scales]})
    model.model.load_state_dict(ckpt["model"])
    return {**ckpt, "model": model.state_dict(), "model_args": dict(model.init_args)}


def add_to_zoo(name: str, checkpoint: str, config: str, overrides=(), command: str | None = None, samples: int = 4,
               half: str = "auto", root: Path | None = None, scales=None) -> dict:
    """Pack ``checkpoint`` (trained with ``config`` + ``overrides``) as zoo entry ``name``; returns the entry.
    ``scales``: serve the model at these input scales (``served_at``); it is then measured, and its samples taken,
    on the validation images at their own size (``data.kwargs.image_scale`` of the training config dropped)."""
    if not scales:
        return _add(name, checkpoint, Path(checkpoint).parent, config, overrides, command, samples, half, root)
    with tempfile.TemporaryDirectory() as tmp:
        wrapped = Path(tmp) / Path(checkpoint).name
        atomic_save(served_at(load_checkpoint(checkpoint), scales), wrapped)
        return _add(name, str(wrapped), Path(checkpoint).parent, config, overrides, command, samples, half, root,
                    full_size=True)


def _add(name, checkpoint, run, config, overrides, command, samples, half, root, full_size=False) -> dict:
    root = Path(root or zoo_dir())
    cfg = load_config(config, [*overrides, "train.amp=none"])
    rest = {k: v for k, v in cfg.data.kwargs.items() if k != "image_scale"}  # served at scale: full-size images
    eval_overrides = [f"data.kwargs={json.dumps(rest)}"] if full_size and "image_scale" in cfg.data.kwargs else []
    if eval_overrides:
        cfg = load_config(config, [*overrides, "train.amp=none", *eval_overrides])
    task = task_for(cfg)
    if task.name not in SAMPLE_DATASETS:
        raise ContextSegError(f"the zoo takes {', '.join(SAMPLE_DATASETS)} models, not {task.name}")
    if half not in ("auto", "yes", "no"):
        raise ContextSegError(f"half must be auto, yes or no, got {half!r}")
    ckpt = load_checkpoint(checkpoint)
    measured = {"float32": evaluate_quietly(task, cfg, checkpoint)}
    with tempfile.TemporaryDirectory() as tmp:
        rounded = Path(tmp) / "half.pt"
        atomic_save({**ckpt, "model": rounded_state(ckpt["model"], True)}, rounded)
        measured["float16"] = evaluate_quietly(task, cfg, str(rounded))
    key = task.key_metric
    change = measured["float16"][key] - measured["float32"][key]
    use_half = half == "yes" or (half == "auto" and abs(change) < HALF_TOLERANCE)
    dtype = "float16" if use_half else "float32"
    digest = save_weights(ckpt["model"], root / f"{name}.safetensors", use_half)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    trained_cfg = ckpt.get("config") or cfg.to_dict()
    entry = {
        "name": name, "task": task.name, "file": f"{name}.safetensors", "sha256": digest, "dtype": dtype,
        "size_mb": round((root / f"{name}.safetensors").stat().st_size / 2**20, 2),
        "model_args": dict(ckpt["model_args"]), "dataset": cfg.data.dataset, "split": cfg.data.val_split,
        "classes": ckpt.get("classes"), "palette": ckpt.get("palette"),
        "normalisation": {"input": "RGB uint8 / 255", "mean": list(MEAN), "std": list(STD)},
        "key_metric": key, "headline": headline(task, measured[dtype]),
        "metrics": measured[dtype], "float16_change": change,
        "evaluation": "whole val images, fp32 eager (contextseg eval CONFIG --checkpoint zoo:NAME train.amp=none "
                      "--backend eager)" + (", images at their own size" if full_size else ""),
        "eval_overrides": eval_overrides,  # what `contextseg eval zoo:NAME` adds to the training config
        "command": command or f"contextseg train {config} {' '.join(overrides)}".strip(),
        "config_file": str(config), "config": trained_cfg,
        "trained": {"steps": ckpt.get("step"), "train_seconds": summary.get("train_seconds"),
                    "precision": summary.get("precision"), "checkpoint": Path(checkpoint).name},
        "machine": _machine(), "added": time.strftime("%Y-%m-%d"),
    }
    entry["samples"] = {"root": f"samples/{name}", **write_samples(cfg, task, root / "samples" / name, samples)}
    _write_manifest(root, entry)
    with tempfile.TemporaryDirectory() as tmp:  # the weights as the zoo stores them, read back
        stored = Path(tmp) / "stored.pt"
        atomic_save(zoo_checkpoint(name, root), stored)
        sample_metrics = evaluate_quietly(task, sample_config(entry, root), str(stored))
    entry["samples"]["metrics"] = headline(task, sample_metrics)
    _write_manifest(root, entry)
    return entry


def _machine() -> str:
    env = environment(measure=False)
    isa = named(env.get("instruction_sets", {}), "")
    return f"{env.get('cpu')}, {env.get('cores')} cores ({isa}), torch {env.get('torch')}"


def _write_manifest(root: Path, entry: dict) -> None:
    models = manifest(root)
    models[entry["name"]] = entry
    text = json.dumps({"format": "contextseg-zoo-v1", "models": [models[k] for k in sorted(models)]}, indent=1)
    write_text(root / "manifest.json", text + "\n")  # temp file + rename
