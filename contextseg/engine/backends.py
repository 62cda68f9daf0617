"""Inference backends: the same model run by the fastest engine this machine offers, outputs checked.

    fast = optimize_for_inference(model, torch.randn(1, 3, 360, 480), backend="auto")
    logits = fast(x)["out"]          # (B, K, H, W) at the input size, as prediction and evaluation need them

Exact backends (fp32; outputs equal the eager model's up to float rounding):
    torch        eval mode, BatchNorm folded into the convolutions, channels_last (any input size)
    compile      the same module through torch.compile (inductor, weights frozen); recompiles for a new size
    onnxruntime  an ONNX export (cached on disk by model hash and input size), all graph optimisations on
    openvino     OpenVINO Runtime on the same export, inference precision pinned to f32 (``pip install openvino``)
    auto         the fastest of the exact backends whose logits equal the eager fp32 model's within
                 ``AUTO_RTOL`` of the logit scale (or, where float32 itself is noisier for this model and input,
                 within twice the difference that channels_last alone makes), by a short timed probe; the verdict
                 is cached per machine, model and input shape (``CONTEXTSEG_CACHE`` or ~/.cache/contextseg)
Approximate backends (never picked by auto; ``contextseg bench`` prints what they cost in agreement):
    bf16         bf16 autocast + folded BN + channels_last, only where the CPU/GPU runs bf16 natively
    int8         static post-training quantisation (onnxruntime QDQ, per-channel weights) calibrated on the
                 ``calibration`` images given

Every backend returns ``{"out": logits}`` with the logits bilinearly resized to the input size (the eager
model's stride-4 logits resized the same way), so backends are interchangeable behind ``Predictor`` and ``eval``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import ContextSegError
from ..models.fuse import fuse_conv_bn
from ..models.resize import DEFAULT_ALIGN_CORNERS, align_corners_of, resize
from ..cache import cache_dir
from ..onnx_graph import DeployModel, export_graph, require
from ..registry import is_classifier
from .hardware import backends_available, cpu_flags, cpu_model, isa_ceiling, native_bf16
from .runtime import resolve_amp

EXACT = ("torch", "compile", "onnxruntime", "openvino")
APPROXIMATE = ("bf16", "int8")
BACKENDS = ("auto", *EXACT, *APPROXIMATE)
CHOICES = ("eager", *BACKENDS)  # what predict / eval / Predictor take ("eager": the model itself, under amp)
AUTO_RTOL = 1e-4  # an exact backend's logits differ from eager fp32 by at most this share of the logit scale


def model_hash(model: nn.Module) -> str:
    """sha256 (first 16 hex digits) of the model's class, constructor arguments and state (weights and buffers)."""
    h = hashlib.sha256(type(model).__name__.encode())
    h.update(json.dumps(getattr(model, "init_args", {}), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def machine_key() -> str:
    """What a timing verdict depends on besides the model: CPU, ISA limits, threads, torch version."""
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    return f"{cpu_model()}|{','.join(flags)}|{isa_ceiling()}|{torch.get_num_threads()}|{torch.__version__}"


class InferenceModel(nn.Module):
    """A model behind a backend: ``__call__(x) -> {"out": (B, K, H, W) logits at the input size}`` (no grad)."""

    def __init__(self, run, backend: str, source: nn.Module, exact: bool, note: str = ""):
        super().__init__()
        self._run, self.backend, self.exact, self.note = run, backend, exact, note
        self.num_classes = getattr(source, "num_classes", None)
        self.in_channels = getattr(source, "in_channels", 3)
        self.classes = getattr(source, "classes", None)
        self.palette = getattr(source, "palette", None)

    def forward(self, x: torch.Tensor) -> dict:
        with torch.no_grad():
            return {"out": self._run(x.float())}

    def train(self, mode: bool = True):  # an inference engine has no training mode
        return self

    def __repr__(self) -> str:
        return f"InferenceModel(backend={self.backend!r}{', ' + self.note if self.note else ''})"


def at_input_size(logits: torch.Tensor, size, align_corners: bool = DEFAULT_ALIGN_CORNERS) -> torch.Tensor:
    """float32 logits bilinearly resized to ``size`` (H, W), as prediction does (unchanged when already there); pass
    the model's ``align_corners`` (``align_corners_of(model)``). A classifier's (B, K) logits are only made float32."""
    if logits.dim() != 4:
        return logits.float()
    return resize(logits.float(), size, align_corners)


def _eager(model: nn.Module):
    ac = align_corners_of(model)

    def run(x):
        return at_input_size(model(x)["out"], x.shape[-2:], ac)
    return run


def _folded(model: nn.Module) -> nn.Module:
    """A float32 eval-mode copy with BatchNorm folded and channels_last weights (the caller's model is untouched)."""
    fused = fuse_conv_bn(copy.deepcopy(model).float().eval().cpu())
    return fused.to(memory_format=torch.channels_last)


def _torch(model: nn.Module, example: torch.Tensor, amp: str = "none"):
    fused, ac = _folded(model), align_corners_of(model)

    def run(x):
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            return at_input_size(fused(x)["out"], x.shape[-2:], ac)
    return run


def _compile(model: nn.Module, example: torch.Tensor):
    import torch._inductor.config as inductor_config

    fused, ac = _folded(model), align_corners_of(model)
    compiled = torch.compile(fused, dynamic=False)

    def run(x):
        x = x.contiguous(memory_format=torch.channels_last)
        with inductor_config.patch(freezing=True):  # weights as constants: prepacked oneDNN convolutions
            return at_input_size(compiled(x)["out"], x.shape[-2:], ac)
    run(example)  # compiles now, not at the first image
    return run


def onnx_export_cached(model: nn.Module, example: torch.Tensor) -> Path:
    """The model's ONNX graph (logits at the input size, dynamic B/H/W), exported once per model hash and
    input size into the cache folder."""
    require("onnx")
    require("onnxscript")
    shape = "x".join(map(str, example.shape[1:]))
    path = cache_dir() / "onnx" / f"{model_hash(model)}_{shape}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    deploy = DeployModel(copy.deepcopy(model).float().eval().cpu(), classifier=is_classifier(model)).eval()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    errors = []
    try:
        for exporter in ("dynamo", "torchscript"):
            try:
                export_graph(deploy, example.expand(2, *example.shape[1:]).contiguous(), Path(tmp), True, 18,
                             exporter)
                break
            except Exception as exc:  # an exporter limitation: try the next one
                errors.append(f"{exporter}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
        else:
            raise ContextSegError("ONNX export for the inference backend failed; " + " | ".join(errors))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _onnxruntime(model: nn.Module, example: torch.Tensor, path: Path | None = None):
    ort = require("onnxruntime")
    path = path or onnx_export_cached(model, example)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x):
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().contiguous().numpy()})[0])
    return run


def _openvino(model: nn.Module, example: torch.Tensor, precision: str = "f32"):
    try:
        import openvino as ov
    except ImportError:
        raise ContextSegError("backend openvino needs OpenVINO Runtime: pip install openvino") from None
    path = onnx_export_cached(model, example)
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
              "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(str(path), "CPU", config)

    def run(x):
        return torch.from_numpy(compiled(x.detach().cpu().contiguous().numpy())[0].copy())
    return run


def _int8(model: nn.Module, example: torch.Tensor, calibration):
    """Static QDQ quantisation with onnxruntime of the convolutions: per-channel int8 weights, uint8 activations
    calibrated (MinMax) on ``calibration``, an iterable of (B, C, H, W) normalised float tensors of the example's
    size. Attention (MatMul, softmax) stays fp32: quantising it too cost 1.0 val mIoU on CamVid (OCR + W18-Small-v2,
    600 steps, 35.98 -> 34.99), the convolutions alone 0.00 (docs/speed.md)."""
    if calibration is None:
        raise ContextSegError("backend int8 needs calibration images: optimize_for_inference(..., calibration=[x, ...])"
                              " with a few (B, 3, H, W) normalised batches; `contextseg predict` and `bench` take "
                              "--calibration DIR, `eval` calibrates on the config's training images")
    require("onnxruntime")
    from onnxruntime import quantization as q

    fp32 = onnx_export_cached(model, example)
    batches = [c.detach().cpu().float().contiguous().numpy() for c in calibration]
    if not batches:
        raise ContextSegError("backend int8: the calibration set is empty")
    digest = hashlib.sha256(b"".join(b.tobytes()[:4096] for b in batches)).hexdigest()[:8]
    path = fp32.with_name(f"{fp32.stem}_int8conv_{len(batches)}_{digest}.onnx")
    if not path.is_file():
        class Reader(q.CalibrationDataReader):
            def __init__(self):
                self.items = iter(batches)

            def get_next(self):
                b = next(self.items, None)
                return None if b is None else {"image": b}

        prepped = fp32.with_name(f"{fp32.stem}_prep.onnx")
        q.quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
        os.close(fd)
        try:
            q.quantize_static(str(prepped), tmp, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                              op_types_to_quantize=["Conv"],  # attention MatMul and softmax stay fp32
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              reduce_range="avx512_vnni" not in cpu_flags() and "amx_int8" not in cpu_flags())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return _onnxruntime(model, example, path)


def _build(model: nn.Module, example: torch.Tensor, backend: str, calibration=None):
    if backend == "torch":
        return _torch(model, example)
    if backend == "compile":
        why = backends_available()["compile"]
        if why:
            raise ContextSegError(f"backend compile: {why}")
        return _compile(model, example)
    if backend == "onnxruntime":
        return _onnxruntime(model, example)
    if backend == "openvino":
        return _openvino(model, example)
    if backend == "bf16":
        native, why = native_bf16(torch.device("cpu"))
        if not native:
            raise ContextSegError(f"backend bf16: {why}; use an exact backend (auto)")
        return _torch(model, example, amp="bf16")
    if backend == "int8":
        return _int8(model, example, calibration)
    raise ContextSegError(f"unknown inference backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def compare(run, reference: torch.Tensor, x: torch.Tensor) -> dict:
    """{"rel_diff": max |logit difference| / max |reference logit|, "label_agreement": share of equal argmax}."""
    out = run(x)
    scale = float(reference.abs().max()) or 1.0
    return {"rel_diff": float((out - reference).abs().max()) / scale,
            "label_agreement": float((out.argmax(1) == reference.argmax(1)).float().mean())}


def timed_calls(fn, repeats: int = 3, warmup: int = 1, device=None) -> tuple[float, object]:
    """(median seconds of ``fn()`` over ``repeats`` calls after ``warmup``, the last result); on a CUDA ``device``
    each call is bracketed by a synchronise, so the time is the GPU's too."""
    cuda = device is not None and torch.device(device).type == "cuda"
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def probe(model: nn.Module, example: torch.Tensor, candidates=None, repeats: int = 3, progress=None) -> dict:
    """Build and time each exact backend on ``example``; returns {"choice", "rows": [...]}: per backend its
    seconds per call, relative difference from eager fp32 and whether it qualifies (or why it was skipped)."""
    model = model.float().eval().cpu()
    available = backends_available()
    candidates = list(candidates or [b for b in EXACT if available[b] is None and b != "compile"])
    with torch.no_grad():
        reference = _eager(model)(example)
        rows = [{"backend": "eager", "seconds": timed_calls(lambda: _eager(model)(example), repeats)[0],
                 "rel_diff": 0.0,
                 "label_agreement": 1.0, "ok": True}]
        # float32 noise floor: the same eager model with another memory layout (other kernels, other summation
        # order); a backend within twice that floor is as exact as fp32 itself can be for this model and input
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        floor = compare(_eager(cl), reference, example.contiguous(memory_format=torch.channels_last))["rel_diff"]
        tolerance = max(AUTO_RTOL, 2 * floor)
        for backend in candidates:
            try:
                run = _build(model, example, backend)
                row = {"backend": backend, **compare(run, reference, example)}
                row["ok"] = row["rel_diff"] <= tolerance
                row["seconds"] = timed_calls(lambda: run(example), repeats)[0]
            except Exception as exc:  # a backend that cannot run here is skipped, with its reason
                row = {"backend": backend, "ok": False, "skipped": f"{exc.__class__.__name__}: {str(exc)[:200]}"}
            rows.append(row)
            if progress:
                progress(row)
    ok = [r for r in rows if r["ok"] and r["backend"] != "eager"]
    choice = min(ok, key=lambda r: r["seconds"])["backend"] if ok else "torch"
    return {"choice": choice, "rows": rows, "fp32_floor": floor, "tolerance": tolerance}


def auto_backend(model: nn.Module, example: torch.Tensor, progress=None) -> str:
    """The exact backend ``auto`` picks for this model and input shape on this machine (cached verdict)."""
    key = f"{machine_key()}|{model_hash(model)}|{tuple(example.shape)}"
    path = cache_dir() / "backend_probe.json"
    try:
        verdicts = json.loads(path.read_text())
    except (OSError, ValueError):
        verdicts = {}
    if key in verdicts:
        return verdicts[key]["choice"]
    result = probe(model, example, progress=progress)
    verdicts[key] = result
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(verdicts, indent=1))
    os.replace(tmp, path)
    return result["choice"]


def optimize_for_inference(model: nn.Module, example_input: torch.Tensor, backend: str = "auto",
                           calibration=None, progress=None) -> InferenceModel:
    """``model`` (eval mode, CPU) run by ``backend`` (see the module docstring) for inputs like ``example_input``
    (B, C, H, W). Returns an ``InferenceModel``: ``fast(x)["out"]`` are the logits at the input size."""
    if backend not in BACKENDS:
        raise ContextSegError(f"unknown inference backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if example_input.dim() != 4:
        raise ContextSegError(f"example_input must be a (B, C, H, W) batch, got shape {tuple(example_input.shape)}")
    model = model.float().eval().cpu()
    example = example_input.detach().float().cpu()
    note = ""
    if backend == "auto":
        chosen = auto_backend(model, example, progress)
        note = "chosen by auto"
    else:
        chosen = backend
    run = _build(model, example, chosen, calibration)
    return InferenceModel(run, chosen, model, exact=chosen in EXACT, note=note)


def default_backend(amp: str, device) -> str:
    """What predict and eval run when no backend is named: the eager model where autocast will run bf16 natively
    (or on CUDA), else the exact ``torch`` backend (folded BatchNorm + channels_last, no export cost)."""
    device = torch.device(device)
    return "eager" if device.type != "cpu" or resolve_amp(amp, device) != "none" else "torch"


def prepare(model: nn.Module, backend: str | None, example: torch.Tensor, amp: str = "auto", device="cpu",
            calibration=None, progress=None) -> tuple[nn.Module, str]:
    """(the model to call, the autocast precision to call it in) for ``backend`` (None: ``default_backend``;
    "eager": ``model`` itself under ``amp``). A backend runs on the CPU in its own precision (amp "none")."""
    backend = backend or default_backend(amp, device)
    if backend == "eager":
        return model, amp
    if torch.device(device).type != "cpu":
        raise ContextSegError(f"backend {backend!r} runs on the CPU; on {device} use --backend eager")
    return optimize_for_inference(model, example, backend, calibration=calibration, progress=progress), "none"
