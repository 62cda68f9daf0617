"""The Task interface: what training, evaluation and prediction need from a kind of problem, and the helpers the
tasks share. A task is a peer of the others; adding one is a module in contextseg/tasks/ and one line in
``tasks.TASKS``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Subset
from tqdm import tqdm

from ..config import Config
from ..errors import ContextSegError
from ..onnx_graph import is_onnx
from ..engine.checkpoint import write_error
from ..engine.runtime import write_json


@dataclass
class Setup:
    """What a task hands the Trainer: the model, its loss ``(outputs, targets) -> (total, parts)``, the training
    set, ``evaluate_fn(model) -> dict`` (None: no validation), ``meta`` (classes, palette) for the checkpoints, an
    optional ``batch_transform(images, targets)`` run on the device (a batch mix), and the metric that decides
    best.pt."""
    model: object
    loss: object
    train_set: object
    evaluate_fn: object
    meta: dict
    key_metric: str
    batch_transform: object = None


class Task:
    """One kind of problem. ``name`` is the config's ``task:``; ``datasets`` the ``task`` values of the dataset
    builders it trains on (how old configs without ``task:`` are recognised); ``doctor``: whether ``contextseg
    doctor`` checks its configs."""
    name = ""
    datasets: tuple = ()
    doctor = False

    def check(self, cfg: Config) -> None:
        """One clear message when the config's model, loss and data do not belong to this task."""

    def setup(self, cfg: Config, progress: bool) -> Setup:
        """Datasets, model, loss and evaluator of a training run (seeded, in the process group, by run_training)."""
        raise NotImplementedError

    def format(self, result: dict) -> str:
        """The metrics of an evaluation as the lines printed after it."""
        raise NotImplementedError

    def evaluate(self, cfg: Config, checkpoints: list[str], progress: bool, backend: str | None,
                 inference: dict) -> tuple[dict, dict]:
        """(metrics, report fields) of ``checkpoints`` on cfg.data.val_split; called by ``evaluate_checkpoint``."""
        raise NotImplementedError

    def predict(self, checkpoints: list, inputs, out_dir, options: dict) -> str:
        """Predict ``inputs`` (images or folders) into ``out_dir``; returns the line to print. ``checkpoints``:
        paths, or models already loaded; ``options``: the CLI's predict options (device, amp, alpha, backend,
        calibration, save_attention, progress), test-time ones (scales, merge, flip, window, stride) and
        ``loaded``, the first checkpoint as ``load_checkpoint`` returned it (so it is read once)."""
        raise NotImplementedError

    def evaluate_checkpoint(self, cfg: Config, checkpoints, split: str | None = None, progress: bool = True,
                            out: str | None = None, backend: str | None = None, **inference) -> dict:
        """Evaluate a checkpoint (or several, where the task averages them) on cfg's validation split (or
        ``split``), print the task's report and, with ``out``, write it as JSON. ``inference``: test-time options
        (scales, merge, flip, window, stride), for dense tasks."""
        checkpoints = [str(checkpoints)] if isinstance(checkpoints, (str, Path)) else [str(c) for c in checkpoints]
        if not checkpoints:
            raise ContextSegError("no checkpoint given; pass --checkpoint A.pt [B.pt ...]")
        if split:
            cfg.data.val_split = split
        self.check(cfg)
        if out:
            check_writable(Path(out))  # before the evaluation, not after it
        result, report = self.evaluate(cfg, checkpoints, progress, backend, inference)
        print(self.format(result))
        if report.get("skipped"):
            skipped = report["skipped"]
            print(f"skipped {len(skipped)} bad file(s), not scored (--skip-bad):\n  " + "\n  ".join(skipped))
        if out:
            write_json(out, {"checkpoint": checkpoints[0] if len(checkpoints) == 1 else checkpoints,
                             "split": cfg.data.val_split, **report, **result})
        return result


def one_pt_checkpoint(checkpoints: list[str], what: str) -> str:
    """The single .pt checkpoint of a task that evaluates one at a time, from the .pt file."""
    if len(checkpoints) != 1 or is_onnx(checkpoints[0]):
        raise ContextSegError(f"{what} checkpoints are evaluated one at a time, from the .pt file")
    return checkpoints[0]


def refuse_inference_options(inference: dict, what: str) -> None:
    """Test-time options are for dense prediction; a task without them says so once."""
    used = sorted(k for k, v in inference.items() if v not in (None, False))
    if used:
        raise ContextSegError(f"test-time options {used} are not supported for {what}; evaluate without them")


def loadable_samples(dataset, progress: bool = False):
    """(the samples of ``dataset`` that load, the one-line reasons of those that do not): ``eval --skip-bad``.
    Every sample is read once before the evaluation (one more decode of each file than without the flag); a
    dataset with no bad sample comes back as it is, else as a ``Subset``. None loading is an error."""
    keep, bad = [], []
    for i in tqdm(range(len(dataset)), desc="check files", disable=not progress, leave=False, dynamic_ncols=True):
        try:
            dataset[i]
            keep.append(i)
        except (ContextSegError, OSError) as exc:
            bad.append(str(exc).split(". Fix:")[0])
    if not keep:
        raise ContextSegError(f"none of the {len(dataset)} samples could be read; the first: {bad[0]}")
    return (Subset(dataset, keep) if bad else dataset), bad


def require_val_set(val_set) -> None:
    if val_set is None:
        raise ContextSegError("no split to evaluate: set data.val_split or pass --split")


def check_writable(path: Path) -> None:
    """A report file that can be written: not a folder, its folder creatable and writable (probed)."""
    if path.is_dir():
        raise ContextSegError(f"--out {str(path)!r} is a folder; give a file name, e.g. {path / 'eval.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise write_error(path, exc) from None
