"""What a training checkpoint holds and how it is written and read back (``Checkpointer``).

A checkpoint holds the model, optimizer, scheduler and grad-scaler states, the progress counters (epoch, step, best
value of the key metric, last metrics), the config, the model's constructor arguments (``model_args``, so
``load_model`` rebuilds it alone), classes and palette, and the RNG states of every rank, so that a run resumed from
it ends where an uninterrupted run ends (trainer.py). Writes are atomic and on rank 0 only.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import torch

from ..errors import ContextSegError
from . import distributed as dist_utils
from .checkpoint import (atomic_save, load_checkpoint, load_state_dict_checked, remove_stale_temps, rng_state,
                         set_rng_state, write_error)
from .runtime import jsonable, seed_rank

FORMAT = "contextseg-checkpoint-v1"


class Checkpointer:
    """Saves and restores one run's training state in OUTPUT_DIR. ``progress`` dicts carry epoch, step, best and
    metrics (the trainer's counters); ``meta`` the classes and palette written beside the weights."""

    def __init__(self, cfg, model: torch.nn.Module, optimizer, scheduler, scaler, meta: dict | None = None):
        self.cfg, self.model, self.optimizer, self.scheduler, self.scaler = cfg, model, optimizer, scheduler, scaler
        self.meta = meta or {}
        self.out_dir = Path(cfg.output_dir)
        self.rank, self.world = dist_utils.get_rank(), dist_utils.get_world_size()

    def state(self, progress: dict) -> dict:
        """The checkpoint; in a distributed run every rank calls it (it gathers the ranks' RNG states)."""
        rngs = _gather_rng_states()
        state = {
            "format": FORMAT,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "model_args": dict(getattr(self.model, "init_args", {})),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": progress["epoch"],
            "step": progress["step"],
            "best": progress["best"],
            "config": self.cfg.to_dict(),
            "metrics": jsonable(progress.get("metrics") or {}),
            "rng": rngs[0],
            "num_threads": torch.get_num_threads(),
            "classes": self.meta.get("classes"),
            "palette": [list(c) for c in self.meta.get("palette", [])] or None,
        }
        if self.world > 1:
            state["rng_ranks"] = rngs
        return state

    def save(self, name: str, progress: dict) -> Path:
        """Write OUTPUT_DIR/name atomically (rank 0; every rank must call it). Refuses non-finite weights."""
        for k, v in self.model.state_dict().items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise ContextSegError(f"refusing to write {name}: weight {k} is not finite; lower train.lr")
        path = self.out_dir / name
        state = self.state(progress)
        if self.rank == 0:
            atomic_save(state, path)
        return path

    def resume(self, path, device) -> dict:
        """Load ``path`` into the model, optimizer, scheduler, scaler and RNGs; returns its progress dict."""
        ckpt = load_checkpoint(path, map_location=device)
        load_state_dict_checked(self.model, ckpt["model"], source=f"checkpoint {str(path)!r}")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        best = ckpt.get("best", -math.inf)
        progress = {"step": ckpt["step"], "epoch": ckpt["epoch"], "best": -math.inf if best is None else best,
                    "metrics": ckpt.get("metrics") or {}}  # best is written as null when -inf
        threads = ckpt.get("num_threads")
        if self.cfg.deterministic and torch.device(device).type == "cpu" and threads \
                and threads != torch.get_num_threads():
            warnings.warn(
                f"resuming a deterministic CPU run with {torch.get_num_threads()} threads that was saved with "
                f"{threads}: float sums reduce in another order, so the result will not match an uninterrupted run "
                f"bit for bit; set OMP_NUM_THREADS={threads} for an exact resume", stacklevel=2)
        ranks = ckpt.get("rng_ranks")
        if ranks and len(ranks) == self.world:
            set_rng_state(ranks[self.rank])
        else:
            set_rng_state(ckpt["rng"])
            if self.rank:
                seed_rank(self.cfg.seed, self.rank, progress["step"])
        return progress


def _gather_rng_states() -> list:
    """Every rank's RNG state (one process: a list of one), exchanged as torch.save bytes."""
    if dist_utils.get_world_size() == 1:
        return [rng_state()]
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    return [torch.load(io.BytesIO(b), weights_only=True) for b in dist_utils.all_gather_object(buf.getvalue())]


RUN_FILES = ("last.pt", "best.pt", "summary.json", "metrics.jsonl")


def prepare_output_dir(cfg, resume: str | None = None, overwrite: bool = False) -> Path:
    """Check OUTPUT_DIR before a run writes into it: a folder (not a file) that can be written, holding no earlier
    run unless the run resumes (``resume``) or replaces it (``overwrite``: its run files are deleted now). Stale
    temp files of a killed save are removed. Returns the folder."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ContextSegError(f"output_dir {str(out)!r} is a file; choose a folder: output_dir=runs/NAME")
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not resume and not overwrite:
        raise ContextSegError(f"output_dir {str(out)!r} holds a run ({', '.join(held)}); continue it with "
                              f"--resume {out / 'last.pt'}, replace it with --overwrite, or train into another "
                              f"output_dir=...")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe_{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise write_error(out / "last.pt", exc) from None
    remove_stale_temps(out)
    if overwrite and not resume and dist_utils.is_main():
        for name in held:
            (out / name).unlink()
    return out
