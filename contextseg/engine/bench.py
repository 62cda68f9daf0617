"""``contextseg bench``: inference (and with ``train=True`` training-step) speed of one model in every execution mode
this machine offers, each against eager fp32 on the same random batch.

Inference modes (median of ``repeats`` timed calls after warm-up; every mode ends with logits at the input size):
    eager        the model as built, float32 (the reference every other row is compared with)
    eager_cl     the same with channels_last memory format
    torch, compile, onnxruntime, openvino, auto, bf16, int8
                 the inference backends of ``contextseg.engine.backends`` (auto: the fastest exact one)
    fp16         float16 autocast + channels_last (CUDA only)
Old names still work: fp32 = eager, fused = torch, onnx = onnxruntime.
Training modes (``train=True``; one SGD step on the batch with CE on every output, median seconds):
    fp32, fp32_cl (channels_last), bf16_cl (bf16 autocast + channels_last), compile (torch.compile, fp32 channels_last)

A mode that cannot run here gives its row with ``skipped``: the one-line reason, never an exception. Each row has
s_per_img, img_per_s, speed-up over eager fp32, GFLOP/s (from the model's FLOP count), and for inference the largest
logit difference relative to the logit scale (``rel_diff``) and the share of pixels (of images, for a classifier)
whose class agrees with fp32.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ContextSegError
from ..models.resize import align_corners_of
from .backends import EXACT, at_input_size, optimize_for_inference, timed_calls
from .hardware import native_bf16
from .runtime import select_device

INFER_MODES = ("eager", "eager_cl", "torch", "compile", "onnxruntime", "openvino", "auto", "bf16", "fp16", "int8")
TRAIN_MODES = ("fp32", "fp32_cl", "bf16_cl", "compile")
ALIASES = {"fp32": "eager", "fused": "torch", "onnx": "onnxruntime"}


def default_modes(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["eager", "eager_cl", "bf16", "fp16"]
    return ["eager", "eager_cl", "torch", "onnxruntime", "openvino", "auto", "bf16"]


def default_train_modes(device: torch.device) -> list[str]:
    return ["fp32", "fp32_cl", "bf16_cl"]


def gflops_per_image(model: nn.Module, size, in_channels: int = 3) -> float | None:
    """Forward GFLOPs of one image (2 FLOPs per multiply-add, torch's FLOP counter); None where it cannot count."""
    from torch.utils.flop_counter import FlopCounterMode

    # parameters frozen for the count: the counter's module tracker fails on views of parameters made under
    # no_grad (e.g. learned queries expanded over the batch), which require grad without a grad_fn
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_channels, *size, device=next(model.parameters()).device))
        return counter.get_total_flops() / 1e9
    except Exception:  # a model the counter cannot trace: the rows go without GFLOP/s
        return None
    finally:
        for p in frozen:
            p.requires_grad_(True)


@torch.no_grad()
def settle_batchnorm(model: nn.Module, x: torch.Tensor, passes: int = 2) -> nn.Module:
    """Give a freshly initialised model's BatchNorm layers the statistics of ``x`` (cumulative average over
    ``passes`` training-mode forwards), then eval mode. Untrained running statistics (mean 0, variance 1) leave
    eval-mode activations unnormalised: logits in the hundreds, where float rounding differences between
    backends reach 1e-3 of the logit scale; settled, they are ~1e-6, as for a trained model. Speed is unchanged."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for _ in range(passes):
        model(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()


def _infer_runner(model: nn.Module, x: torch.Tensor, mode: str, calibration):
    size, ac = x.shape[-2:], align_corners_of(model)
    if mode == "eager":
        return lambda: at_input_size(model(x)["out"], size, ac)
    if mode in ("eager_cl", "fp16"):
        if mode == "fp16" and x.device.type != "cuda":
            raise ContextSegError("fp16 autocast runs on CUDA only; on the CPU see bf16")
        fast = _copy_cl(model)
        xc = x.contiguous(memory_format=torch.channels_last)

        def run():
            with torch.autocast(x.device.type, dtype=torch.float16, enabled=mode == "fp16"):
                return at_input_size(fast(xc)["out"], size, ac)
        return run
    if mode == "bf16" and x.device.type == "cuda":
        if not native_bf16(x.device)[0]:
            raise ContextSegError(native_bf16(x.device)[1])
        fast, xc = _copy_cl(model), x.contiguous(memory_format=torch.channels_last)

        def run_bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return at_input_size(fast(xc)["out"], size, ac)
        return run_bf16
    if x.device.type != "cpu":
        raise ContextSegError(f"backend {mode} runs on the CPU; bench it with --device cpu")
    engine = optimize_for_inference(model, x, mode, calibration=calibration)
    label = engine.backend if mode == "auto" else None
    runner = lambda: engine(x)["out"]  # noqa: E731
    runner.chosen = label
    return runner


def _copy_cl(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def benchmark(model: nn.Module, size=(512, 512), batch: int = 1, repeats: int = 10, warmup: int = 2,
              modes=None, device: str = "auto", progress=print, train_modes=None, calibration=None) -> list[dict]:
    """Time ``model`` on a (batch, C, H, W) random input in each inference mode (and each of ``train_modes``);
    returns one dict per mode (``kind``: infer | train). Modes that cannot run here get ``skipped``."""
    dev = select_device(device)
    modes = [ALIASES.get(m, m) for m in (modes if modes is not None else default_modes(dev))]
    train_modes = list(train_modes or [])
    unknown = [m for m in modes if m not in INFER_MODES] + [m for m in train_modes if m not in TRAIN_MODES]
    if unknown:
        raise ContextSegError(f"unknown bench mode(s) {unknown}; inference: {', '.join(INFER_MODES)}; training "
                              f"(--train): {', '.join(TRAIN_MODES)}")
    model = model.float().eval().to(dev)
    in_channels = getattr(model, "in_channels", 3)
    x = torch.randn(batch, in_channels, *size, device=dev, generator=torch.Generator().manual_seed(0)
                    if dev.type == "cpu" else None)
    gflops = gflops_per_image(model, size, in_channels)
    common = {"batch": batch, "size": list(size), "device": str(dev), "threads": torch.get_num_threads(),
              "gflops_per_img": gflops}
    rows = []
    if progress:
        progress(HEADER)
    with torch.no_grad():
        base_s, reference = timed_calls(_infer_runner(model, x, "eager", None), repeats, warmup, dev)
    scale = float(reference.abs().max()) or 1.0
    for mode in ["eager"] + [m for m in modes if m != "eager"]:
        row = {"kind": "infer", "mode": mode, **common}
        try:
            if mode == "eager":
                seconds, out = base_s, reference
            else:
                with torch.no_grad():
                    runner = _infer_runner(model, x, mode, calibration)
                    seconds, out = timed_calls(runner, repeats, warmup, dev)
                if getattr(runner, "chosen", None):
                    row["backend"] = runner.chosen
            out = out.float()
            row.update(_speed(seconds, batch, base_s, gflops))
            row["rel_diff"] = float((out - reference).abs().max()) / scale
            row["label_agreement"] = float((out.argmax(1) == reference.argmax(1)).float().mean())
            row["exact"] = mode in ("eager", "eager_cl", *EXACT) or row.get("backend") in EXACT
        except Exception as exc:  # bench never fails whole: the mode's row says why
            row["skipped"] = _reason(exc)
        if mode in modes:
            rows.append(row)
            if progress:
                progress(format_row(row))
    if train_modes:
        base_train = None
        for mode in train_modes:
            row = {"kind": "train", "mode": mode, **common}
            try:
                seconds = time_train_step(model, x, mode, repeats=max(2, repeats // 2), warmup=max(1, warmup))
                base_train = base_train or seconds  # speed-up over the first training mode timed (fp32 first)
                row.update(_speed(seconds, batch, base_train, 3 * gflops if gflops else None))
                row["train_s_per_img"] = row["s_per_img"]
            except Exception as exc:
                row["skipped"] = _reason(exc)
            rows.append(row)
            if progress:
                progress(format_row(row))
    return rows


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text if isinstance(exc, ContextSegError) else f"{exc.__class__.__name__}: {text}"[:300]


def _speed(seconds: float, batch: int, base: float, gflops: float | None) -> dict:
    row = {"s_per_batch": seconds, "s_per_img": seconds / batch, "img_per_s": batch / seconds,
           "speedup": base / seconds}
    if gflops:
        row["gflop_per_s"] = gflops * batch / seconds
    return row


def time_train_step(model: nn.Module, x: torch.Tensor, mode: str, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of one SGD step (forward, CE on every output at the input size, backward, update) on a copy
    of ``model`` in training ``mode`` (fp32 | fp32_cl | bf16_cl | compile). A classifier: CE on its (B, K)
    outputs against random image labels."""
    dev = x.device
    if mode == "bf16_cl" and not native_bf16(dev)[0]:
        raise ContextSegError(f"{native_bf16(dev)[1]}; time it anyway with amp=bf16 in a training run")
    net = copy.deepcopy(model).train()
    cl = mode != "fp32"
    if cl:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(net) if mode == "compile" else net
    classes = max(int(getattr(model, "num_classes", 2) or 2), 2)
    labels = torch.randint(0, classes, (x.shape[0], *x.shape[-2:]), device=dev,
                           generator=torch.Generator().manual_seed(1) if dev.type == "cpu" else None)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, foreach=True)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=mode == "bf16_cl"):
            out = forward(x)
        ac = align_corners_of(model)
        if any(v.dim() == 2 for v in out.values()):  # a classifier: its class logits, one label per image
            loss = sum(F.cross_entropy(v.float(), labels[:, 0, 0]) for v in out.values() if v.dim() == 2)
        else:
            loss = sum(F.cross_entropy(at_input_size(v, x.shape[-2:], ac), labels) if v.shape[1] > 1 else
                       F.binary_cross_entropy_with_logits(at_input_size(v, x.shape[-2:], ac)[:, 0],
                                                          labels.float().clamp(0, 1))
                       for k, v in out.items() if v.dim() == 4)
        loss.backward()
        opt.step()

    seconds, _ = timed_calls(step, repeats, warmup, dev)
    return seconds


def format_row(r: dict) -> str:
    name = r["mode"] + (f" -> {r['backend']}" if r.get("backend") else "")
    if "skipped" in r:
        return f"{r['kind']:<5} {name:<22} skipped: {r['skipped']}"
    gf = f"{r['gflop_per_s']:>8.1f}" if "gflop_per_s" in r else f"{'-':>8}"
    extra = ""
    if r["kind"] == "infer":
        extra = f" {r['rel_diff']:>9.1e} {100 * r['label_agreement']:>8.3f}%"
    return f"{r['kind']:<5} {name:<22} {r['s_per_img']:>9.4f} {r['img_per_s']:>8.2f} {r['speedup']:>8.2f}x {gf}{extra}"


HEADER = (f"{'kind':<5} {'mode':<22} {'s/img':>9} {'img/s':>8} {'speed-up':>9} {'GFLOP/s':>8} "
          f"{'rel diff':>9} {'labels':>9}")


def format_rows(rows: list[dict]) -> str:
    return "\n".join([HEADER, *(format_row(r) for r in rows)])
