"""ONNX export of a segmentation, saliency or classification model and an onnxruntime predictor with the
``Predictor`` interface.

    from contextseg.export import export_onnx, OnnxPredictor
    report = export_onnx("runs/camvid/best.pt", "model.onnx", size=(360, 480))   # checks ORT against PyTorch
    label = OnnxPredictor("model.onnx").predict(image)                          # (H, W) from (H, W, 3) uint8
    contextseg eval CFG --checkpoint model.onnx        # the ONNX model's val mIoU (OnnxModel behind the contract)

The graph: input ``image`` (B, 3, H, W) float32, normalised as in training (ImageNet mean/std on 0..1 pixels,
stored in the model's metadata); output ``logits`` (B, K, H, W) float32 at the input size (the model's stride-4 or
stride-8 logits upsampled bilinearly, as ``Predictor`` does), or ``labels`` (B, H, W) int64 with ``output="labels"``.
Batch, height and width are dynamic unless ``dynamic=False``. An image classifier (saol, gap) gives ``logits``
(B, K) or ``labels`` (B,) and takes images of its training crop only (dynamic batch); ``contextseg predict`` and
``eval`` resize to it as for the checkpoint. Metadata (``onnx.ModelProto.metadata_props``): classes, palette, mean,
std, output, the model's create_model arguments; for a classifier also task ("classification") and input_size.

Needs the ``export`` extra: ``pip install onnx onnxruntime onnxscript``. torch's dynamo exporter is tried first;
the TorchScript exporter is the fallback (``exporter="torchscript"`` to choose it).
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.transforms import MEAN, STD
from .engine.checkpoint import load_checkpoint, model_from_checkpoint, training_crop, write_error
from .engine.predictor import Predictor
from .errors import ContextSegError
from .models.multiscale import configure_inference
from .onnx_graph import DeployModel, OnnxModel, export_graph, is_onnx, require
from .registry import is_classifier
from .visualize import default_palette

PRODUCER = "contextseg"  # the metadata mark of a file export_onnx wrote: only such a file is replaced

@dataclass
class ExportReport:
    path: str
    exporter: str
    seconds: float
    megabytes: float
    max_abs_diff: float  # ORT vs PyTorch logits (or mismatching label share for output="labels")
    label_agreement: float  # share of pixels (of images, for a classifier) whose argmax agrees
    checked_sizes: list
    unit: str = "pixels"

    def summary(self) -> str:
        return (f"exported {self.path} ({self.megabytes:.1f} MB, {self.exporter} exporter, {self.seconds:.1f} s); "
                f"onnxruntime vs PyTorch on {', '.join('x'.join(map(str, s)) for s in self.checked_sizes)}: "
                f"max |diff| {self.max_abs_diff:.2e}, labels agree on {100 * self.label_agreement:.3f}% of {self.unit}")


def export_onnx(model, path: str | Path, size=None, output: str = "logits", dynamic: bool = True,
                opset: int = 18, exporter: str = "auto", check_sizes=None, rtol: float = 1e-3,
                scales=None, merge=None, flip: bool = False) -> ExportReport:
    """Export ``model`` (a checkpoint path or zoo:NAME, a ``load_checkpoint`` dict, or a model) to ONNX at ``path``
    and check it with onnxruntime.

    size: (H, W) of the example input (the size the graph is traced at; other sizes work when ``dynamic``); default
        512x512, and for an image classifier its training crop (from the checkpoint's config), the only size its
        graph takes.
    exporter: "dynamo", "torchscript" or "auto" (dynamo, then TorchScript if dynamo fails).
    check_sizes: input sizes compared between onnxruntime and PyTorch (default: ``size`` and, when dynamic, a
        second odd size); a max |logit difference| above ``rtol`` times the logit scale (max |PyTorch logit|)
        raises ContextSegError, the file is kept for inspection.
    scales/merge/flip: export the test-time pyramid too (``configure_inference``).
    The file is written atomically (temp file + rename). ``path`` must end in .onnx (predict and eval recognise ONNX
    files by it); it may not be the checkpoint itself, and an existing file there is replaced only when it is an
    ONNX file contextseg exported (``check_export_target``). Returns an ExportReport.
    """
    onnx = require("onnx")
    ort = require("onnxruntime")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ContextSegError(f"unknown exporter {exporter!r}; choose auto, dynamo or torchscript")
    source = model if isinstance(model, (str, Path)) else None
    path = check_export_target(path, source)
    if source is not None and is_onnx(source):
        raise ContextSegError(f"{source} is already an ONNX file; export the checkpoint it came from")
    crop = None
    if source is not None:
        model = load_checkpoint(source)
    if isinstance(model, dict):
        crop = training_crop(model)
        model = model_from_checkpoint(model, source=str(source or "checkpoint"))
    classifier = is_classifier(model)
    if classifier:
        if scales or merge or flip:
            raise ContextSegError("test-time options (scales, merge, flip) are for dense models; export the "
                                  "classifier without them")
        if size is None and not crop:
            raise ContextSegError("give the image size the classifier was trained at: size=(H, W) (--size H W), "
                                  "e.g. 32 32 for CIFAR-10")
        size = size or crop
    else:
        model = configure_inference(model, scales=scales, merge=merge, flip=flip)
    model = model.float().eval()
    deploy = DeployModel(model, output, classifier).eval()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    size = tuple(int(s) for s in (size or (512, 512)))
    example = torch.randn(2 if dynamic else 1, getattr(model, "in_channels", 3), *size)
    start = time.perf_counter()
    tried = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    errors = []
    try:
        for name in tried:
            try:
                export_graph(deploy, example, tmp, dynamic, opset, name)
                used = name
                break
            except ContextSegError:
                raise
            except Exception as exc:  # an exporter limitation: try the next one
                errors.append(f"{name}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:300]}")
        else:
            raise ContextSegError("ONNX export failed; " + " | ".join(errors))
        seconds = time.perf_counter() - start
        proto = onnx.load(str(tmp))
        meta = {
            "classes": json.dumps(getattr(model, "classes", None) or [str(k) for k in range(model.num_classes)]),
            "palette": json.dumps([list(map(int, c)) for c in (getattr(model, "palette", None)
                                                               or default_palette(model.num_classes))]),
            "mean": json.dumps(list(MEAN)), "std": json.dumps(list(STD)), "output": output,
            "model_args": json.dumps(getattr(model, "init_args", {}), default=str), "producer": PRODUCER,
        }
        if classifier:
            meta.update(task="classification", input_size=json.dumps(list(size)))
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        for leftover in (tmp, tmp.with_name(tmp.name + ".data")):  # and external data a large graph may have
            leftover.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sizes = [tuple(s) for s in check_sizes] if check_sizes else \
        [size] + ([(size[0] + 33, size[1] - 15)] if dynamic and not classifier else [])
    worst, scale, agree, pixels = 0.0, 0.0, 0, 0
    for s in sizes:
        x = torch.randn(3 if classifier and dynamic else 1, example.shape[1], *s)  # a batch the trace never saw
        with torch.no_grad():
            ref = deploy(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        if got.shape != ref.shape:
            raise ContextSegError(f"ONNX output shape {got.shape} differs from PyTorch {ref.shape} at input {s}")
        if output == "labels":
            worst = max(worst, float((got != ref).mean()))
            agree += int((got == ref).sum())
        else:
            worst = max(worst, float(np.abs(got - ref).max()))
            scale = max(scale, float(np.abs(ref).max()))
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
        pixels += len(x) if classifier else int(np.prod(s))
    report = ExportReport(str(path), used, seconds, path.stat().st_size / 2**20, worst, agree / pixels,
                          [list(s) for s in sizes], "images" if classifier else "pixels")
    if output == "logits" and worst > rtol * max(scale, 1e-12):
        raise ContextSegError(f"the ONNX model differs from PyTorch by up to {worst:.3g}, {worst / scale:.2g} of the "
                              f"logit scale {scale:.3g} (> rtol {rtol}); "
                              f"{path} is kept for inspection: try exporter='torchscript' or another opset")
    return report


def check_export_target(path, checkpoint=None) -> Path:
    """``path`` as a Path, or one ContextSegError: it is the checkpoint being exported, a folder, an existing file
    that is not an ONNX file contextseg exported (its metadata names the producer "contextseg"), or a name that does
    not end in .onnx."""
    path = Path(path)
    if checkpoint is not None and Path(checkpoint).exists() and path.exists() and path.samefile(checkpoint):
        raise ContextSegError(f"--out {path} is the checkpoint being exported; it would be overwritten: choose "
                              f"another file, e.g. {path.with_suffix('.onnx')}")
    if path.is_dir():
        raise ContextSegError(f"--out {path} is a folder; give the ONNX file to write, e.g. {path / 'model.onnx'}")
    if path.suffix.lower() != ".onnx":
        raise ContextSegError(f"--out {path} does not end in .onnx (predict and eval recognise ONNX files by it); "
                              f"e.g. --out {path.with_suffix('.onnx')}")
    if path.exists() and not exported_by_contextseg(path):
        raise ContextSegError(f"--out {path} exists and is not an ONNX file contextseg exported; it is kept: choose "
                              f"another file, or move it away first")
    return path


def exported_by_contextseg(path) -> bool:
    """True for an ONNX file whose metadata names contextseg as its producer (what export_onnx writes)."""
    try:
        proto = require("onnx").load(str(path), load_external_data=False)
    except ContextSegError:
        raise
    except Exception:  # not ONNX at all
        return False
    return any(p.key == "producer" and p.value == PRODUCER for p in proto.metadata_props)


def OnnxPredictor(path: str | Path, providers=None, threads: int | None = None) -> Predictor:  # noqa: N802
    """``Predictor`` on an exported ONNX file of a dense model: ``predict``, ``predict_proba``, ``predict_files``."""
    model = OnnxModel(path, providers, threads)
    if model.task == "classification":
        raise ContextSegError(f"{path} is an image classifier; classify with `contextseg predict IMAGES --checkpoint "
                              f"{path} --out DIR`, or OnnxModel(path)(x)['out'] for (B, K) logits")
    return Predictor(model, device="cpu")


__all__ = ["export_onnx", "OnnxModel", "OnnxPredictor", "DeployModel", "ExportReport", "check_export_target"]
