"""Device choice, precision (``resolve_amp``), autocast, seeding, the resumable sampler and JSON records shared by
the engine."""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import ContextSegError
from .hardware import native_bf16

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
_warned_emulated: set = set()


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ContextSegError(f"device {name!r} asked for but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def precision_choice(amp: str, device: torch.device) -> tuple[str, str]:
    """(the autocast precision to run: "none" | "bf16" | "fp16", the reason in words) for ``amp`` on ``device``.

    auto: bf16 where the device runs it natively (CPU with AVX-512-BF16 or AMX, CUDA with bf16; see
    engine.hardware.native_bf16), else fp32 ("none"); fp16 is never chosen by auto (it needs loss scaling).
    An explicit bf16 where it is emulated is kept, with a warning (once per process) that it is slow."""
    device = torch.device(device)
    if amp not in AMP_CHOICES:
        raise ContextSegError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp == "none":
        return "none", "asked for (amp=none)"
    if amp == "fp16":
        if device.type != "cuda":
            raise ContextSegError("amp=fp16 needs CUDA; on the CPU use amp=auto (bf16 where native) or amp=none")
        return "fp16", "asked for (amp=fp16)"
    native, why = native_bf16(device)
    if amp == "bf16":
        if not native and device.type == "cpu" and why not in _warned_emulated:
            _warned_emulated.add(why)
            warnings.warn(f"amp=bf16 on this machine: {why}; use amp=auto or amp=none for fp32", stacklevel=3)
        return "bf16", "asked for (amp=bf16)" + ("" if native else f"; {why}")
    return ("bf16" if native else "none"), f"auto: {why}"


def resolve_amp(amp: str, device) -> str:
    """The one place that decides the precision: "none" | "bf16" | "fp16" for ``amp`` (auto | none | bf16 | fp16)
    on ``device``; see ``precision_choice`` for the rule and its reason."""
    return precision_choice(amp, device)[0]


def autocast(device: torch.device, amp: str = "auto"):
    """Autocast in the precision ``resolve_amp(amp, device)`` picks; "none" is a no-op."""
    device = torch.device(device)
    amp = resolve_amp(amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def loader_workers(requested: int, device) -> int:
    """DataLoader workers for ``data.num_workers`` (-1: auto). Auto on the CPU: none where there are at most 4
    cores (workers there take cores from the compute threads: measured 0.177 s/it without workers vs 0.20 with
    2 on a 2-core EPYC, demo model), else a quarter of them up to 4; on CUDA half the cores up to 8."""
    if requested >= 0:
        return requested
    cores = os.cpu_count() or 1
    if torch.device(device).type == "cuda":
        return min(8, cores // 2)
    return 0 if cores <= 4 else min(4, cores // 4)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class ResumableSampler(Sampler):
    """Shuffles with a generator seeded by (seed, epoch) and can start mid-epoch, so a resumed run
    sees exactly the samples an uninterrupted run would have seen.

    Distributed (``num_replicas`` > 1): every rank draws the same permutation, cut to a multiple of
    ``num_replicas``, and takes every ``num_replicas``-th index from ``rank`` on (as DistributedSampler, without
    padding). With a per-rank batch B, batch k of all ranks together is then exactly batch k of one process with
    batch ``num_replicas * B``. ``start`` is a position in this rank's shard."""

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, rank: int = 0, num_replicas: int = 1):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank, self.num_replicas = rank, num_replicas
        self.epoch = 0
        self.start = 0

    @property
    def shard_size(self) -> int:
        return self.num_samples // self.num_replicas

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        order = order[self.rank:self.shard_size * self.num_replicas:self.num_replicas]
        return iter(order[self.start:])

    def __len__(self) -> int:
        return max(0, self.shard_size - self.start)


class ShardSampler(Sampler):
    """Evaluation shard of a distributed run: indices rank, rank + W, ... (no padding, no duplicates), so the
    confusion matrices of all ranks sum to the matrix of the whole set."""

    def __init__(self, num_samples: int, rank: int = 0, num_replicas: int = 1):
        self.indices = list(range(rank, num_samples, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one training sample: a function of (seed, epoch, index) only."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] % (2**63 - 1))


class SeededSamples(torch.utils.data.Dataset):
    """Wraps a training set so that sample ``i`` of epoch ``e`` is drawn with torch, numpy and python RNGs
    seeded by ``sample_seed(seed, e, i)`` (the global states are restored afterwards).

    Its augmentation then depends on (seed, epoch, index) alone: not on the DataLoader worker that loads it,
    the position in the epoch, the number of workers or of processes. This is what makes a mid-epoch resume
    (workers restarted at another position) and a distributed run draw the same crops and flips as one
    uninterrupted process. ``set_epoch`` is called before each epoch's loader iterator is created (workers are
    not persistent, so they see the new epoch)."""

    def __init__(self, dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        seed = sample_seed(self.seed, self.epoch, int(index))
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also seeds every
                random.seed(seed)                          # accelerator API lazily, 0.2 ms a sample
                np.random.seed(seed % 2**32)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __getattr__(self, name):  # num_classes, classes, ignore_index, ... of the wrapped set
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Distinct python/numpy/torch RNG streams for the non-zero ranks of a distributed run (dropout, batch mixes);
    ``step`` > 0 when a resumed run has no saved state for this rank."""
    value = (seed * 1000 + 7919 * rank) ^ step
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def worker_init(worker_id: int) -> None:
    """Distinct, reproducible numpy/python RNG streams per DataLoader worker (albumentations uses them)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def jsonable(obj):
    """``obj`` with tensors and numpy scalars as numbers or lists, tuples as lists, keys as strings and non-finite
    floats as None (JSON has no inf/nan)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.item() if obj.numel() == 1 else obj.tolist())
    if isinstance(obj, (np.integer, np.floating)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, obj) -> Path:
    """Write ``jsonable(obj)`` to ``path`` (indented), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(obj), indent=2))
    return path

