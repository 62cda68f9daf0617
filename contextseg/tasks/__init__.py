"""Tasks as peers: each kind of problem owns its datasets, model, loss, evaluator, report, checkpoint evaluation and
prediction outputs (``base.Task``). The engine below them (trainer, checkpoints, evaluation loops, predictor) knows no
task; the CLI above dispatches through ``TASKS``. Adding a task: a module here and one line in ``TASKS``.

``run_training(cfg)`` is the one training entry point (every task, torchrun too); ``evaluate_checkpoint(cfg, ...)``
the one evaluation entry point. The task of a config is ``task:`` when set, else the one its dataset declares (the
``task`` attribute of the dataset builder; none = segmentation): ``task_for``. A checkpoint's task is its config's
(``task_for_checkpoint``).
"""
from __future__ import annotations

from ..config import Config, config_from_dict
from ..engine import distributed as dist_utils
from ..engine.checkpointer import prepare_output_dir
from ..engine.runtime import seed_everything
from ..engine.trainer import Trainer
from ..errors import ContextSegError
from ..registry import CLASSIFIERS, DATASETS
from .base import Setup, Task
from .classification import ClassificationTask
from .saliency import SaliencyTask
from .segmentation import SegmentationTask
from .weak import WeakTask

TASKS: dict[str, Task] = {task.name: task for task in (
    SegmentationTask(),
    SaliencyTask(),
    ClassificationTask(),
    WeakTask(),
)}


def declared_task(dataset: str) -> str:
    """The task a registered dataset is for (its builder's ``task`` attribute, by ``Task.datasets``)."""
    declared = getattr(DATASETS.get(dataset), "task", "segmentation")
    for task in TASKS.values():
        if declared in task.datasets:
            return task.name
    return "segmentation"


def task_for(cfg: Config) -> Task:
    """The Task of ``cfg``: ``cfg.task``, which must fit the dataset, or (unset) the dataset's."""
    declared = declared_task(cfg.data.dataset)
    if cfg.task is None:
        return TASKS[declared]
    if cfg.task not in TASKS:
        raise ContextSegError(f"task={cfg.task!r} is not a task; use one of {', '.join(TASKS)} (or leave it out: "
                              f"dataset {cfg.data.dataset!r} is for {declared})")
    if cfg.task != declared:
        raise ContextSegError(f"task={cfg.task!r} but dataset {cfg.data.dataset!r} is for {declared}; set "
                              f"task={declared} or a {cfg.task} dataset")
    return TASKS[cfg.task]


def task_for_checkpoint(ckpt: dict) -> Task:
    """The Task of a loaded checkpoint: its config's; checkpoints without a config by their model's arch."""
    if ckpt.get("config"):
        try:
            return task_for(config_from_dict(ckpt["config"]))
        except ContextSegError:
            pass  # a config of an older version, or data not registered here: the arch decides
    arch = (ckpt.get("model_args") or {}).get("arch")
    return TASKS["classification" if arch in CLASSIFIERS else "weak" if arch == "ssnet" else "segmentation"]


def evaluate_checkpoint(cfg: Config, checkpoints, **kwargs) -> dict:
    """``task_for(cfg).evaluate_checkpoint(cfg, checkpoints, ...)``: see ``Task.evaluate_checkpoint``."""
    return task_for(cfg).evaluate_checkpoint(cfg, checkpoints, **kwargs)


def run_training(cfg: Config, resume: str | None = None, progress: bool = True, stop_at: int | None = None,
                 overwrite: bool = False) -> dict:
    """Train as ``cfg`` says; returns the summary written to OUTPUT_DIR/summary.json.

    Launched by torchrun (WORLD_SIZE > 1 in the environment) this runs in every process: it joins the process
    group (NCCL on CUDA, gloo on the CPU), trains with DistributedDataParallel on data.batch_size samples per
    process, evaluates each rank's shard of the validation set and sums the counts; rank 0 writes the files. The
    group is destroyed at the end. ``stop_at``: pause after that step, writing last.pt (time-boxed runs). An
    OUTPUT_DIR that holds a run is refused unless ``resume`` continues it or ``overwrite`` replaces it."""
    task = task_for(cfg)
    task.check(cfg)
    prepare_output_dir(cfg, resume, overwrite)
    cfg.task = task.name  # the run's config.yaml and checkpoints name their task
    owns_group = dist_utils.init_distributed(cfg.device)
    ok = False
    try:
        rank = dist_utils.get_rank()
        progress = progress and rank == 0
        seed_everything(cfg.seed, cfg.deterministic)
        s = task.setup(cfg, progress)
        trainer = Trainer(cfg, s.model, s.loss, s.train_set, s.evaluate_fn, meta=s.meta, key_metric=s.key_metric,
                          progress=progress, batch_transform=s.batch_transform)
        summary = trainer.fit(resume=resume, stop_at=stop_at)
        report = task.format(summary.get("final") or {})
        if rank == 0 and report:
            print(report)
        ok = True
        return summary
    finally:
        if owns_group:
            dist_utils.cleanup(ok)


__all__ = ["TASKS", "Task", "Setup", "declared_task", "task_for", "task_for_checkpoint", "evaluate_checkpoint",
           "run_training"]
