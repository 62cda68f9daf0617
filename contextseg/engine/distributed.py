"""DistributedDataParallel plumbing: process group from torchrun's environment, rank helpers, reductions and
the ``contextseg train --nproc N`` launcher.

A process started by ``torchrun`` (or by ``--nproc``) finds RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT in its environment; ``init_distributed`` joins the group with NCCL when it trains on CUDA (one GPU
per process: ``cuda:LOCAL_RANK``) and gloo on the CPU. Without WORLD_SIZE > 1 everything here is a no-op and
a run is the plain single-process one.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from ..errors import ContextSegError
from .runtime import select_device


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return get_rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def init_distributed(device: str = "auto") -> bool:
    """Join the process group when launched with WORLD_SIZE > 1; True when this call created it (the caller
    then ends it with ``cleanup``). NCCL for CUDA, gloo for the CPU."""
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise ContextSegError("this PyTorch build has no torch.distributed; train with one process")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ContextSegError(f"WORLD_SIZE={env_world_size()} is set but {key} is not; launch with "
                                  f"`torchrun --nproc_per_node=N -m contextseg train CONFIG` or `contextseg train --nproc N`")
    backend, options = "gloo", {}
    if _wants_cuda(device):
        if not torch.cuda.is_available():
            raise ContextSegError(f"device {device!r} asked for but CUDA is not available; use device=cpu (gloo)")
        if local_rank() >= torch.cuda.device_count():
            raise ContextSegError(f"LOCAL_RANK {local_rank()} but only {torch.cuda.device_count()} GPUs here; "
                                  f"use --nproc_per_node <= {torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank())
        backend, options = "nccl", {"device_id": torch.device("cuda", local_rank())}
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **options)
    return True


def device_for(device: str = "auto") -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` in a distributed CUDA run, else ``select_device(device)``."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if is_distributed():
        return torch.device("cpu") if not _wants_cuda(device) else torch.device("cuda", local_rank())
    return select_device(device)


def cleanup(ok: bool = True) -> None:
    """Barrier (after a clean run) and destroy the process group."""
    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place on the returned tensor, which has the input's device); identity in one process."""
    if not is_distributed():
        return tensor
    comm = _comm_device()
    buf = tensor.to(comm)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not tensor:
        tensor.copy_(buf.to(tensor.device))
    return tensor


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def launch(nproc: int, argv: list[str]) -> int:
    """``contextseg train --nproc N ...``: run ``torchrun --standalone --nproc_per_node=N -m contextseg ARGV`` in
    this process (torch.distributed.run: a free local port, the RANK/WORLD_SIZE/LOCAL_RANK environment per worker,
    and all workers stopped when one fails). Returns 0, or 1 when a worker failed (its error is printed above).

    Unless OMP_NUM_THREADS is set, each worker gets cpu_count // N threads (torchrun alone would give each one
    thread). The launcher's environment is restored afterwards: torchrun writes OMP_NUM_THREADS into it, and a
    process started later from this one (e.g. a resumed run) would silently run with another thread count, which
    changes floating-point reduction order and so breaks bit-exact resume."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    if nproc < 1:
        raise ContextSegError(f"--nproc must be >= 1, got {nproc}")
    if env_world_size() > 1:
        raise ContextSegError("--nproc given inside a distributed launch (WORLD_SIZE is set); use one or the other")
    saved = dict(os.environ)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        torchrun_main(["--standalone", f"--nproc_per_node={nproc}", "-m", "contextseg", *argv])
    except ChildFailedError as exc:
        failures = "; ".join(f"rank {f.local_rank} exit code {f.exitcode}" for f in exc.failures.values())
        raise ContextSegError(f"distributed training failed ({failures}); the worker's own error is printed above")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return 0
