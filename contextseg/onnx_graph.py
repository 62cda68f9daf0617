"""The ONNX graph of a model: ``DeployModel`` (logits or labels at the input size) and ``export_graph`` (torch's
dynamo exporter, or the TorchScript one). Used by ``contextseg.export`` (files users ship) and by the onnxruntime
and OpenVINO inference backends (``contextseg.engine.backends``); it imports nothing else of the package but errors.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ContextSegError

OUTPUTS = ("logits", "labels")


class DeployModel(nn.Module):
    """(B, 3, H, W) normalised image -> logits (B, K, H, W) at the input size, or labels (B, H, W) int64."""

    def __init__(self, model: nn.Module, output: str = "logits"):
        super().__init__()
        if output not in OUTPUTS:
            raise ContextSegError(f"unknown export output {output!r}; choose one of {', '.join(OUTPUTS)}")
        self.model, self.output = model, output

    def forward(self, image: Tensor) -> Tensor:
        logits = self.model(image)["out"]
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(1) if self.output == "labels" else logits


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
