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
    """(B, 3, H, W) normalised image -> logits (B, K, H, W) at the input size, or labels (B, H, W) int64."""

    def __init__(self, model: nn.Module, output: str = "logits"):
        super().__init__()
        if output not in OUTPUTS:
            raise ContextSegError(f"unknown export output {output!r}; choose one of {', '.join(OUTPUTS)}")
        self.model, self.output = model, output
        self.align_corners = align_corners_of(model)  # the upsampling the model was trained with

    def forward(self, image: Tensor) -> Tensor:
        logits = self.model(image)["out"]
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
    """Write ``module``'s graph for the ``example`` input to ``path`` (dynamic batch/height/width if ``dynamic``)."""
    out_name = module.output
    axes = {0: "batch", 1: "height", 2: "width"} if out_name == "labels" else {0: "batch", 2: "height", 3: "width"}
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and the like
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
            if exporter == "dynamo":
                require("onnxscript")
                dims = ({0: torch.export.Dim("batch", min=1, max=256), 2: torch.export.Dim("height", min=16, max=8192),
                         3: torch.export.Dim("width", min=16, max=8192)},) if dynamic else None
                program = torch.onnx.export(module, (example,), dynamo=True, input_names=["image"],
                                            output_names=[out_name], dynamic_shapes=dims, opset_version=opset,
                                            verbose=False)
                program.save(str(path))
            else:
                torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["image"],
                                  output_names=[out_name], opset_version=opset,
                                  dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, out_name: axes}
                                  if dynamic else None)
    finally:
        quiet.setLevel(level)


class OnnxModel(nn.Module):
    """An exported ONNX file run by onnxruntime behind the model contract: (B, 3, H, W) normalised float batch ->
    {"out": (B, K, H, W)} logits at the input size. So ``Predictor``, ``contextseg eval`` and ``contextseg predict``
    take ``.onnx`` files as they take checkpoints. Classes and palette come from the file's metadata; no parameters
    (``.to()`` and ``.eval()`` are no-ops; inference runs on onnxruntime's CPU provider unless ``providers``)."""

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
        self.classes = json.loads(meta["classes"]) if "classes" in meta else None
        self.palette = json.loads(meta["palette"]) if "palette" in meta else None
        out_channels = self.session.get_outputs()[0].shape[1]
        # the graph's channel count wins: a saliency model has 2 classes but 1 logit channel
        self.num_classes = int(out_channels) if isinstance(out_channels, int) else len(self.classes or [])
        if not self.num_classes:
            raise ContextSegError(f"{str(path)!r} has neither a static output channel count nor class names; "
                                  f"export it again with `contextseg export`")

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.session.run(None, {"image": x.detach().float().cpu().contiguous().numpy()})[0]
        return {"out": torch.from_numpy(logits).to(x.device)}
