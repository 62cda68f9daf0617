"""What this machine runs fast: CPU model and instruction sets, whether bf16 is native, the measured convolution
throughput per precision (the roofline speed figures are read against), and the inference backends installed.

    contextseg env                 # prints all of it; --json FILE saves it
    native_bf16(torch.device("cpu"))  -> (False, "the CPU has no AVX-512-BF16 or AMX: bf16 would be emulated")

bf16 counts as native on a CPU when three things hold: the CPU has AVX-512-BF16 or AMX-BF16, oneDNN will use them
(``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, which honours ``ONEDNN_MAX_CPU_ISA``), and no ISA ceiling in the
environment (``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY``) keeps torch below them; ``CONTEXTSEG_BF16=0`` turns it off
(fp32 under ``amp: auto`` on any machine; the test suite sets it). Without them bf16 is emulated
and 7-70x slower than fp32 (measured on a 2-core AVX2 EPYC), so ``train.amp: auto`` stays in fp32 there.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import platform
import shutil
import time

import torch

# oneDNN ISA ceilings (ONEDNN_MAX_CPU_ISA) that still allow its bf16 instructions
_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX", "ALL",
              "AVX10_1_512_AMX_FP16", "AVX10_2_512_AMX_2", "AVX2_VNNI_2")


@functools.lru_cache(maxsize=None)
def cpuinfo() -> dict:
    """The first processor's fields in /proc/cpuinfo (Linux), e.g. {"model name": ..., "cpu family": "26", ...};
    empty where that file does not exist."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_flags() -> frozenset:
    """The CPU's feature flags (x86 "flags", Arm "Features"); empty where not reported."""
    info = cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_model() -> str:
    return cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_generation() -> str:
    """"family F model M" (x86): it tells AMD Zen 3 (family 25), Zen 4 (25, models 16-31, 96-127, 160-175) and
    Zen 5 (26) apart where a virtual machine names each a bare "AMD EPYC"; "" where not reported."""
    info = cpuinfo()
    if "cpu family" not in info or "model" not in info:
        return ""
    return f"family {info['cpu family']} model {info['model']}"


def cpu_name() -> str:
    """The model name with the family and model where reported, e.g. "AMD EPYC family 26 model 2"."""
    return f"{cpu_model()} {cpu_generation()}".rstrip()


def instruction_sets() -> dict:
    """{"avx2": bool, "avx512": bool, "avx512_bf16": bool, "amx": bool} as the CPU reports them (before any ceiling
    in the environment); all False where the flags cannot be read."""
    flags = cpu_flags()
    return {"avx2": "avx2" in flags, "avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx": "amx_bf16" in flags}


def named(isa: dict, none: str) -> str:
    """The instruction sets an ``instruction_sets()`` dict marks True, comma-joined, or ``none``."""
    return ", ".join(k for k, v in isa.items() if v) or none


def cpu_label() -> str:
    """One line naming the CPU as a figure must: model, instruction sets, any ceiling set in the environment,
    e.g. ``AMD EPYC family 26 model 2 (avx2, avx512, avx512_bf16)`` (the model name alone often does not tell Zen 3
    from Zen 5, nor the instruction sets Zen 4 from Zen 5)."""
    has = named(instruction_sets(), "no AVX2")
    ceiling = isa_ceiling()
    return f"{cpu_name()} ({has})" + (f" limited by {ceiling}" if ceiling else "")


def isa_ceiling() -> str | None:
    """The instruction-set limits set in the environment (they make a CPU behave as an older one), or None."""
    parts = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if os.environ.get(k)]
    return " ".join(parts) or None


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether ``device`` runs bf16 convolutions natively, the reason in words)."""
    if os.environ.get("CONTEXTSEG_BF16") == "0":
        return False, "CONTEXTSEG_BF16=0 turns native bf16 off"
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(device)
        return ok, f"{name} {'runs' if ok else 'has no native'} bf16"
    if device.type != "cpu":
        return False, f"no bf16 autocast policy for device type {device.type!r}"
    isa = instruction_sets()
    if cpu_flags() and not (isa["avx512_bf16"] or isa["amx"]):
        return False, "the CPU has no AVX-512-BF16 or AMX: bf16 would be emulated (many times slower than fp32)"
    max_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if max_isa and max_isa not in _BF16_ISAS:
        return False, f"ONEDNN_MAX_CPU_ISA={max_isa} keeps oneDNN off the CPU's bf16 instructions"
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("avx2", "default"):
        return False, f"ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']} keeps torch off AVX-512"
    if not _mkldnn_bf16():
        return False, "oneDNN does not run bf16 on this CPU"
    found = [name for name, key in (("AMX", "amx"), ("AVX-512-BF16", "avx512_bf16")) if isa[key]]
    return True, f"the CPU runs bf16 natively ({', '.join(found) or 'oneDNN bf16'})"


# ----------------------------------------------------------------------------- measured throughput

# 3x3 convolutions of the sizes HRNet runs at 360x480 (channels, height, width): the largest gives the roofline
ROOFLINE_CONVS = ((64, 90, 120), (128, 45, 60), (256, 23, 30))


def conv_gflops(precision: str = "fp32", channels_last: bool = True, shapes=ROOFLINE_CONVS, seconds: float = 0.3,
                batch: int = 2) -> float:
    """Best GFLOP/s (2 FLOPs per multiply-add) of a 3x3 convolution, stride 1, over ``shapes``, in eval mode on
    the CPU with the current thread count. precision: fp32 | bf16 (autocast)."""
    best = 0.0
    for c, h, w in shapes:
        conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).eval()
        x = torch.randn(batch, c, h, w)
        if channels_last:
            conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        flops = 2 * batch * c * c * 9 * h * w
        ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        with torch.no_grad(), ctx:
            conv(x)
            start, runs = time.perf_counter(), 0
            while True:
                conv(x)
                runs += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / len(shapes) and runs >= 2:
                    break
                if elapsed > 5 * seconds:  # an emulated precision: one run is enough to tell
                    break
        best = max(best, flops * runs / elapsed / 1e9)
    return best


def backends_available() -> dict:
    """{backend: None if usable, else the reason it is not} for the inference backends."""
    def module(name, extra):
        return None if importlib.util.find_spec(name) else f"{name} is not installed (pip install {extra})"

    compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++")
    return {
        "torch": None,
        "compile": None if compiler else "torch.compile needs a C++ compiler on the CPU (g++ or clang++)",
        "onnxruntime": module("onnxruntime", "onnx onnxruntime onnxscript") or module("onnxscript", "onnxscript"),
        "openvino": module("openvino", "openvino") or module("onnxscript", "onnxscript"),
    }
