"""The model zoo: trained models that ship with contextseg, offline, in safetensors (no pickle).

``zoo/manifest.json`` (the repository's ``zoo/`` folder, or ``$CONTEXTSEG_ZOO``) lists the entries: name, task, the
model's constructor arguments, dataset, classes and palette, input normalisation, the metrics measured on the
validation split with the stored weights, the training command and config, the machine and wall time, the weights
file and its sha256, and a few validation images shipped beside it (``samples``) with the metrics on them.

    contextseg zoo                                    # the entries and their metrics
    contextseg predict photo.jpg --model camvid-ocr --out pred/
    contextseg eval CONFIG --checkpoint zoo:camvid-ocr
    contextseg.load_model("zoo:camvid-ocr"); contextseg.Predictor("zoo:camvid-ocr")

``zoo_checkpoint(name)`` gives the entry as a checkpoint dict (``model`` state dict in float32, ``model_args``,
``classes``, ``palette``, ``config``), so everything that reads checkpoints reads zoo entries. The weights are
checked against the manifest's sha256 before they are read.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..errors import ContextSegError

PREFIX = "zoo:"


def zoo_dir() -> Path:
    """$CONTEXTSEG_ZOO, else the ``zoo/`` folder of the repository this package runs from."""
    env = os.environ.get("CONTEXTSEG_ZOO")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "zoo"


def is_zoo(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def manifest(root: Path | None = None) -> dict:
    """name -> entry of ``zoo/manifest.json`` (empty when there is none)."""
    path = (root or zoo_dir()) / "manifest.json"
    if not path.is_file():
        return {}
    return {e["name"]: e for e in json.loads(path.read_text())["models"]}


def entry(name: str, root: Path | None = None) -> dict:
    name = name[len(PREFIX):] if is_zoo(name) else name
    models = manifest(root)
    if name not in models:
        known = ", ".join(models) or f"none (no {(root or zoo_dir()) / 'manifest.json'})"
        raise ContextSegError(f"no zoo model {name!r}; `contextseg zoo` lists them: {known}")
    return models[name]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def zoo_checkpoint(name: str, root: Path | None = None) -> dict:
    """The zoo entry ``name`` ("camvid-ocr" or "zoo:camvid-ocr") as a checkpoint dict, its weights in float32."""
    e = entry(name, root)
    path = (root or zoo_dir()) / e["file"]
    if not path.is_file():
        raise ContextSegError(f"zoo model {e['name']!r}: weights file {path} is missing; restore zoo/ from the "
                              f"repository (git checkout zoo/)")
    digest = sha256(path)
    if digest != e["sha256"]:
        raise ContextSegError(f"zoo model {e['name']!r}: {path} has sha256 {digest[:12]}..., the manifest says "
                              f"{e['sha256'][:12]}...; the file is damaged or was replaced: restore it from the "
                              f"repository")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    return {"format": "contextseg-zoo-v1", "model": state, "model_args": dict(e["model_args"]),
            "classes": e.get("classes"), "palette": e.get("palette"), "config": e.get("config"),
            "metrics": e.get("metrics"), "zoo": e["name"]}


def save_weights(state: dict, path: Path, half: bool) -> str:
    """Write a state dict as safetensors (floating tensors in float16 when ``half``); returns its sha256."""
    tensors = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    tmp.chmod(0o644)
    tmp.replace(path)
    return sha256(path)


def rounded_state(state: dict, half: bool) -> dict:
    """The state dict as the zoo stores it and loads it back: floating tensors through float16 when ``half``."""
    return {k: (v.half().float() if half and v.is_floating_point() else v) for k, v in state.items()} \
        if half else dict(state)


def format_zoo(models: dict) -> str:
    """One line per entry: name, task, model, dataset, the headline metric(s), size."""
    if not models:
        return f"no zoo models in {zoo_dir()}"
    lines = []
    for e in models.values():
        metrics = "  ".join(f"{k} {v:.4f}" if k == "mae" else f"{k} {100 * v:.2f}"
                            for k, v in e.get("headline", {}).items())
        lines.append(f"{e['name']:<16} {e['task']:<15} {e['model_args']['arch']}:{e['model_args']['backbone']:<22} "
                     f"{e['dataset']:<10} {metrics}  ({e.get('size_mb', 0):.1f} MB, {e.get('dtype', 'float32')})")
    return "\n".join(lines)

