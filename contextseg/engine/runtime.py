"""Device choice, autocast, seeding and the resumable sampler shared by the engine."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import ContextSegError


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ContextSegError(f"device {name!r} asked for but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def autocast(device: torch.device, amp: str = "none"):
    """bf16 autocast on CPU or CUDA, fp16 on CUDA only; 'none' is a no-op."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ContextSegError("amp=fp16 needs CUDA; on CPU use amp=bf16 or amp=none")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class ResumableSampler(Sampler):
    """Shuffles with a generator seeded by (seed, epoch) and can start mid-epoch, so a resumed run
    sees exactly the samples an uninterrupted run would have seen."""

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        return iter(order[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def worker_init(worker_id: int) -> None:
    """Distinct, reproducible numpy/python RNG streams per DataLoader worker (albumentations uses them)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
