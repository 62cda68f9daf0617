"""`contextseg doctor`: runs a selection of checks for a Config, prints verdicts, writes doctor.json."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ...errors import ContextSegError
from ...losses import build_loss_for
from ...models.resize import align_corners_of, set_align_corners
from ..builders import build_datasets, build_model_for
from ..runtime import precision_choice, write_json
from .common import CHECKS, FAIL, _result, batch_stream, fixed_batch, worst
from .training import check_init_loss, check_overfit, check_update_ratios, lr_range_test
from .gradients import check_gradients
from .data_checks import check_data


# ----------------------------------------------------------------------------- running for a Config


DEFAULT_STEPS = {"init": 2, "overfit": 100, "lr": 60, "ratios": 5}


class Doctor:
    """Runs the checks for a Config: one initial model (seeded), copied fresh for every check."""

    def __init__(self, cfg, out_dir: str | Path | None = None, steps: dict | None = None,
                 batch_size: int | None = None, data_samples: int | None = None, overfit_samples: int = 2,
                 overfit_lr: float = 1e-3, overfit_threshold: float = 0.05, lr_range: Sequence[float] = (1e-6, 1.0),
                 init_tol: float = 0.1, progress: bool = True):
        from ..runtime import seed_everything, select_device

        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / "doctor"
        self.steps = {**DEFAULT_STEPS, **(steps or {})}
        unknown = set(self.steps) - set(DEFAULT_STEPS)
        if unknown:
            raise ContextSegError(f"unknown step count(s) {sorted(unknown)}; set {', '.join(DEFAULT_STEPS)}")
        self.batch_size = batch_size or cfg.data.batch_size
        self.data_samples = data_samples
        self.overfit_samples, self.overfit_lr, self.overfit_threshold = overfit_samples, overfit_lr, overfit_threshold
        self.lr_range = tuple(float(v) for v in lr_range)
        self.init_tol = init_tol
        self.progress = progress
        self.device = select_device(cfg.device)
        seed_everything(cfg.seed)
        self._data = self._model = self._loss = None

    # lazily built, so that gradcheck runs (and the data check reports) even when the data or model fail to build
    def data(self):
        if self._data is None:
            self._data = build_datasets(self.cfg)
        return self._data

    def _base_model(self) -> nn.Module:
        if self._model is None:
            torch.manual_seed(self.cfg.seed)
            self._model = build_model_for(self.cfg, self.data()[0].num_classes)
        return self._model

    def model(self) -> nn.Module:
        """A fresh copy of the model for one check (checks train it)."""
        return copy.deepcopy(self._base_model()).to(self.device)

    def loss(self):
        if self._loss is None:
            loss = build_loss_for(self.cfg, self.data()[0], progress=False)
            self._loss = set_align_corners(loss, align_corners_of(self._base_model())).to(self.device)
        return self._loss

    def batches(self):
        return batch_stream(self.data()[0], self.batch_size, seed=self.cfg.seed)

    def optimizer(self, model):
        from ..trainer import build_optimizer

        return build_optimizer(model, self.cfg.train)

    # the checks
    def init(self):
        train = self.data()[0]
        stream = self.batches()
        batches = [next(stream) for _ in range(self.steps["init"])]
        return check_init_loss(self.model(), batches, train.num_classes, train.ignore_index, self.init_tol,
                               train.classes, self.device)

    def overfit(self):
        train = self.data()[0]
        images, labels = fixed_batch(train, self.overfit_samples, self.cfg.data.crop_size)
        return check_overfit(self.model(), self.loss(), images.to(self.device), labels.to(self.device),
                             self.steps["overfit"], self.overfit_lr, self.overfit_threshold,
                             ignore_index=train.ignore_index, out_dir=self.out_dir, progress=self.progress)

    def lr(self):
        model = self.model()
        return lr_range_test(model, self.loss(), self.batches(), self.optimizer(model), *self.lr_range,
                             steps=self.steps["lr"], configured_lr=self.cfg.train.lr, out_dir=self.out_dir,
                             device=self.device, progress=self.progress)

    def ratios(self):
        model = self.model()
        return check_update_ratios(model, self.loss(), self.batches(), self.optimizer(model), self.steps["ratios"],
                                   out_dir=self.out_dir, device=self.device)

    def gradcheck(self):
        return check_gradients()

    def data_check(self):
        train, val = self.data()
        splits = {self.cfg.data.train_split: train}
        if val is not None:
            splits[self.cfg.data.val_split] = val
        return check_data(splits, self.data_samples, self.out_dir, self.progress)

    def run(self, checks: Sequence[str] = CHECKS, echo: bool = True) -> dict:
        unknown = [c for c in checks if c not in CHECKS]
        if unknown:
            raise ContextSegError(f"unknown doctor check(s) {unknown}; choose from {','.join(CHECKS)}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        amp, why = precision_choice(self.cfg.train.amp, self.device)
        if echo:  # the checks themselves run in fp32
            print(f"precision of the training run: {amp} ({why}); these checks run in fp32", flush=True)
        results = {}
        for name in [c for c in CHECKS if c in checks]:
            t0 = time.time()
            try:
                result = getattr(self, "data_check" if name == "data" else name)()
            except ContextSegError as exc:
                result = _result(name, FAIL, str(exc).strip().splitlines()[-1])
            result["seconds"] = round(time.time() - t0, 2)
            results[name] = result
            if echo:
                print(format_result(result), flush=True)
        report = {"config": self.cfg.name, "overall": worst(r["verdict"] for r in results.values()),
                  "device": str(self.device), "precision": {"amp": amp, "reason": why}, "checks": results}
        write_json(self.out_dir / "doctor.json", report)
        if echo:
            print(f"overall: {report['overall']}; report in {self.out_dir / 'doctor.json'}")
        return report


def run_doctor(cfg, checks: Sequence[str] = CHECKS, out_dir: str | Path | None = None, echo: bool = True,
               **options) -> dict:
    """Run ``checks`` for ``cfg`` (options: see ``Doctor``); prints each verdict, writes OUT/doctor.json and the
    PNGs (default OUT = cfg.output_dir/doctor). Returns the report {"overall", "checks": {name: result}}."""
    return Doctor(cfg, out_dir, **options).run(checks, echo)


def format_result(r: dict) -> str:
    """The verdict line and the numbers behind it, as printed by `contextseg doctor`."""
    lines = [f"[{r['verdict']}] {r['check']:<9} {r['summary']}  ({r.get('seconds', 0):.1f} s)"]
    pad = " " * 7
    name = r["check"]
    if name == "init" and "losses" in r:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in r["losses"].items())
        lines.append(f"{pad}CE per output: {parts}; best constant predictor {r['best_constant_loss']:.3f}; "
                     f"logit std {r['logit_std']:.3f}")
    elif name == "ratios" and "groups" in r:
        acts = r.get("activations", {})
        for g, v in r["groups"].items():
            a = acts.get(g, {})
            ratio = f"{v['update_ratio']:.1e}" if v["update_ratio"] is not None else "   -   "
            extra = ""
            if "dead_relu_fraction" in a:
                extra += f"  dead ReLU {100 * a['dead_relu_fraction']:4.1f}%  zeros {100 * a['relu_zero_fraction']:4.1f}%"
            if "out_mean" in a:
                extra += f"  out mean {a['out_mean']:+.2f} std {a['out_std']:.2f}"
            lines.append(f"{pad}{g:<28} ratio {ratio}  grad {v['grad_norm']:.2e}{extra}")
    elif name == "gradcheck" and "cases" in r:
        for n, c in r["cases"].items():
            lines.append(f"{pad}{'ok  ' if c['passed'] else 'FAIL'} {n}" + (f": {c['error']}" if not c["passed"] else ""))
    elif name == "data" and "splits" in r:
        for split, s in r["splits"].items():
            shares = ", ".join(f"{c} {100 * v:.1f}%" for c, v in zip(r["classes"], s["shares"]))
            lines.append(f"{pad}{split} ({s['samples']} of {s['of']}): {shares}")
        for key in ("problems", "warnings", "notes"):
            lines += [f"{pad}{line}" for line in r.get(key) or []]
    for key in ("cause", "advice", "stopped"):
        value = r.get(key)
        if value:
            lines += [f"{pad}{key}: {v}" for v in (value if isinstance(value, list) else [value])]
    lines += [f"{pad}plot: {p}" for p in r.get("plots") or []]
    return "\n".join(lines)



def parse_checks(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """"init,lr" / ["init", "lr"] / "all" / None -> the checks in their run order; unknown names are an error."""
    if spec is None or spec == "all":
        return CHECKS
    names = [n.strip() for part in ([spec] if isinstance(spec, str) else spec) for n in part.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise ContextSegError(f"unknown doctor check(s) {unknown or names}; use --checks with a comma-separated "
                              f"subset of {','.join(CHECKS)}")
    return tuple(c for c in CHECKS if c in names)


def parse_steps(items: Sequence[str] | None) -> dict[str, int]:
    """--steps values: "N" sets the overfit, lr and ratios step counts; "check=N" sets one (init=N: init batches)."""
    steps: dict[str, int] = {}
    for item in items or []:
        for part in item.split(","):
            key, _, value = part.rpartition("=")
            try:
                n = int(value)
            except ValueError:
                n = 0
            if n < 1 or (key and key not in DEFAULT_STEPS):
                raise ContextSegError(f"--steps {part!r}: give N or CHECK=N with N >= 1 and CHECK one of "
                                      f"{', '.join(DEFAULT_STEPS)} (e.g. --steps overfit=200 lr=100)")
            steps.update({key: n} if key else {"overfit": n, "lr": n, "ratios": n})
    return steps
