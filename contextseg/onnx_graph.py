"""The ONNX graph of a model: ``DeployModel`` (logits or labels at the input size), ``export_graph`` (torch's
dynamo exporter, or the TorchScript one) and ``OnnxModel`` (an exported file behind the model contract). Used by
``contextseg.export`` (files users ship), ``load_model`` (``.onnx`` paths) and the onnxruntime and OpenVINO inference
backends (``contextseg.engine.backends``); it imports nothing of the package but errors and the normalisation.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .data.transforms import MEAN, STD
from .errors import ContextSegError
from .models.resize import align_corners_of, resize

OUTPUTS = ("logits", "labels")


class DeployModel(nn.Module):
    """(B, 3, H, W) normalised image -> logits (B, K, H, W) at the input size, or labels (B, H, W) int64; for an
    image classifier (``classifier=True``: its "out" is (B, K)) logits (B, K) or labels (B,)."""

    def __init__(self, model: nn.Module, output: str = "logits", classifier: bool = False):
        super().__init__()
        if output not in OUTPUTS:
            raise ContextSegError(f"unknown export output {output!r}; choose one of {', '.join(OUTPUTS)}")
        self.model, self.output, self.classifier = model, output, classifier
        self.align_corners = align_corners_of(model)  # the upsampling the model was trained with

    def forward(self, image: Tensor) -> Tensor:
        logits = self.model(image)["out"]
        if logits.dim() == 4:  # a classifier's (B, K) stays as it is
            logits = resize(logits, image.shape[-2:], self.align_corners)
        return logits.argmax(1) if self.output == "labels" else logits


def is_onnx(path) -> bool:
    """True for a path ending in .onnx (any case): an exported graph, not a checkpoint."""
    return Path(str(path)).suffix.lower() == ".onnx"


def require(module: str):
    """Import ``module`` or say which extra installs it."""
    try:
        return __import__(module)
    except ImportError:
        raise ContextSegError(f"{module} is not installed; install the export extra: "
                              f"pip install onnx onnxruntime onnxscript (or pip install -e '.[export]')") from None


def export_graph(module: nn.Module, example: Tensor, path: Path, dynamic: bool, opset: int, exporter: str) -> None:
    """Write ``module``'s graph for the ``example`` input to ``path`` (dynamic batch/height/width if ``dynamic``;
    a classifier's graph has a dynamic batch only: it takes images of its training size)."""
    out_name = module.output
    classifier = getattr(module, "classifier", False)
    axes = {0: "batch"} if classifier else \
        {0: "batch", 1: "height", 2: "width"} if out_name == "labels" else {0: "batch", 2: "height", 3: "width"}
    in_axes = {0: "batch"} if classifier else {0: "batch", 2: "height", 3: "width"}
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and the like
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
            if exporter == "dynamo":
                require("onnxscript")
                dims = {0: torch.export.Dim("batch", min=1, max=256), 2: torch.export.Dim("height", min=16, max=8192),
                        3: torch.export.Dim("width", min=16, max=8192)}
                dims = ({k: v for k, v in dims.items() if k in in_axes},) if dynamic else None
                program = torch.onnx.export(module, (example,), dynamo=True, input_names=["image"],
                                            output_names=[out_name], dynamic_shapes=dims, opset_version=opset,
                                            verbose=False)
                program.save(str(path))
            else:
                torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["image"],
                                  output_names=[out_name], opset_version=opset,
                                  dynamic_axes={"image": in_axes, out_name: axes} if dynamic else None)
    finally:
        quiet.setLevel(level)


def onnx_task(path) -> str:
    """The task an exported file serves, from its metadata: "classification" for an image classifier, else
    "segmentation" (dense models, saliency included, run through the segmentation predictor)."""
    onnx = require("onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX: OnnxModel says so in one line when the task opens it
        return "segmentation"
    return next((p.value for p in proto.metadata_props if p.key == "task"), "segmentation")


class OnnxModel(nn.Module):
    """An exported ONNX file run by onnxruntime behind the model contract: (B, 3, H, W) normalised float batch ->
    {"out": (B, K, H, W)} logits at the input size, or {"out": (B, K)} for an image classifier (``task`` is then
    "classification" and ``input_size`` the (H, W) its graph takes). So ``Predictor``, ``contextseg eval`` and
    ``contextseg predict`` take ``.onnx`` files as they take checkpoints. Classes and palette come from the file's
    metadata; no parameters (``.to()`` and ``.eval()`` are no-ops; inference runs on onnxruntime's CPU provider
    unless ``providers``)."""

    def __init__(self, path: str | Path, providers=None, threads: int | None = None):
        super().__init__()
        ort = require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise ContextSegError(f"ONNX file {str(path)!r} not found; write one with `contextseg export CHECKPOINT`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # random bytes, a truncated download, another format: onnxruntime's long message
            why = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
            raise ContextSegError(f"{str(path)!r} is not a readable ONNX file ({why}); export it again with "
                                  f"`contextseg export CHECKPOINT --out {path.name}`") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("output", "logits") != "logits":
            raise ContextSegError(f"{str(path)!r} was exported with output={meta['output']!r}; evaluation and "
                                  f"prediction need logits: export again with --output logits")
        if json.loads(meta.get("mean", "null")) not in (None, list(MEAN)) or \
                json.loads(meta.get("std", "null")) not in (None, list(STD)):
            raise ContextSegError(f"{str(path)!r} expects another normalisation ({meta['mean']}, {meta['std']}) "
                                  f"than contextseg's data pipeline")
        shape = self.session.get_inputs()[0].shape
        self.in_channels = shape[1] if isinstance(shape[1], int) else 3
        self.task = meta.get("task", "segmentation")
        self.input_size = tuple(json.loads(meta["input_size"])) if "input_size" in meta else None
        self.classes = json.loads(meta["classes"]) if "classes" in meta else None
        self.palette = json.loads(meta["palette"]) if "palette" in meta else None
        out_channels = self.session.get_outputs()[0].shape[1]
        # the graph's channel count wins: a saliency model has 2 classes but 1 logit channel
        self.num_classes = int(out_channels) if isinstance(out_channels, int) else len(self.classes or [])
        if not self.num_classes:
            raise ContextSegError(f"{str(path)!r} has neither a static output channel count nor class names; "
                                  f"export it again with `contextseg export`")

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.input_size and tuple(x.shape[-2:]) != self.input_size:
            raise ContextSegError(f"this exported classifier takes {self.input_size[0]}x{self.input_size[1]} images "
                                  f"(its training crop), got {x.shape[-2]}x{x.shape[-1]}: resize them first")
        logits = self.session.run(None, {"image": x.detach().float().cpu().contiguous().numpy()})[0]
        return {"out": torch.from_numpy(logits).to(x.device)}
