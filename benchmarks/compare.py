"""Run a named suite of training experiments at one fixed budget, over one or more seeds, and collect one table.

One resumable command per claim (run it again after a kill, or with more --seeds, and it goes on):

    .venv/bin/python benchmarks/compare.py heads  --seeds 0 1 train.iters=1000
    .venv/bin/python benchmarks/compare.py losses --seeds 0 1 train.iters=2000
    .venv/bin/python benchmarks/compare.py merges --seeds 0 1 train.iters=1000
    .venv/bin/python benchmarks/compare.py saol   --seeds 0 1        # CIFAR-10 ResNet-20, the config's 7000 its
    .venv/bin/python benchmarks/compare.py pfa    --seeds 0 1        # ECSSD PFA VGG-16, the config's 1000 its
    .venv/bin/python benchmarks/compare.py stn    --seeds 0 1        # distorted CIFAR-10, GAP-FC with / without STN
    .venv/bin/python benchmarks/ssnet_claim.py --seeds 0 1  # SSNet's chain (stage 1 -> pseudo labels -> stage 2): its
                                                            # own script, built on this one
    .venv/bin/python benchmarks/compare.py heads --list                     # the runs and their commands
    .venv/bin/python benchmarks/compare.py heads --base CFG --only fcn,ocr  # a subset ("--all" adds the optional ones)
    .venv/bin/python benchmarks/compare.py merges --only avg,max,attention --baseline avg  # judged against avg

Suites (each experiment = the base config + its overrides + your key=value overrides, which apply to all; the
default base config per suite, --base replaces it; the baseline every other experiment is judged against):

    heads   fcn, psp, aspp, nonlocal, ocr, danet   model.arch=...; on HRNet every head uses all four maps (their
            (+ segtr)                              default in_index); OCR has an auxiliary output ("aux"), DANet
            base CamVid OCR, baseline fcn          two ("pam", "cam", weight 1 each as its code); segtr: OCR as
                                                   a Segmentation Transformer (models/heads/segtr.py)
    losses  ce, ohem, focal, ce_mfb, ce_cutmix,    loss.name / loss.kwargs / data.mix; copy_paste pastes the classes of
            ce_copy_paste  (+ ohem_cutmix,         --copy-paste-classes (default: CamVid's rare pole 2, sign 6,
            ohem_copy_paste, focal_copy_paste)     pedestrian 9, bicyclist 10)
            base CamVid OCR, baseline ce
    merges  single, attention, hierarchical        MultiScale training over --train-scales (0.5 1.0); per-scale
            (+ avg, max)                           supervision loss.weights "out_s*" as each merge's reference:
            base CamVid OCR, baseline single       attention 1.0 (Attention to Scale: each scale's loss weighs
                                                   as much as the merged one), hierarchical 0.05 (NVIDIA's
                                                   supervised_mscale_loss_wt), avg / max 1.0 (Attention to
                                                   Scale's pooling baselines with its extra supervision)
    saol    gap, saol, saol_no_ss, saol_no_sd,     loss.weights (a zero weight drops the term): GAP-FC with CutMix CE
            saol_ce                                (= configs/cifar10/gap_resnet20.yaml); SAOL with all terms; without
                                                   L_ss1 + L_ss2; without L_SD; with the CutMix CE only
            base configs/cifar10/saol_resnet20.yaml, baseline gap
    pfa     full, no_ca, no_sa, no_attention       model.kwargs channel_attention / spatial_attention: PFA with both
                                                   modules; without CA; without SA; without both
            base configs/ecssd/pfa_vgg16.yaml, baseline full
    stn     gap, stn                               model.kwargs.stn: GAP-FC on randomly distorted CIFAR-10 without / with a
            base configs/cifar10/gap_resnet20_distorted.yaml, baseline gap     spatial transformer (= stn_resnet20.yaml)

Seeds: --seeds S [S ...] (default: the base config's seed). Each (experiment, seed) is one run in
OUTPUT = RUNS_ROOT/<suite>/<name> for the base config's seed (the directory of a run without --seeds) and
RUNS_ROOT/<suite>/<name>@seed<S> with the override seed=S for the others (default RUNS_ROOT runs/compare). A run is
- skipped when OUTPUT/summary.json exists and OUTPUT/config.yaml is the config it would run now;
- resumed (--resume OUTPUT/last.pt, exact) when last.pt exists without summary.json, so a killed suite goes on where
  it stopped when run again;
- reused from another finished run under RUNS_ROOT whose resolved config is identical except name and output_dir
  (e.g. losses/ce = heads/ocr = merges/single for one base config; another seed is another config): no training
  twice;
- reused from a finished row of another suite's table in RESULTS_DIR (compare_*.json) whose config, resolved from
  that table's base and overrides, is the same: a run trained on another machine counts once too;
- refused when OUTPUT holds a run of another config (the keys that differ are named): pass --rerun NAME,... (an
  experiment: all its seeds; or one run, NAME@seedS) to train it again from scratch.
A failing run is recorded with its error and the suite goes on (exit status 1 at the end).

Collected per run: the task's key metric (summary.json "key_metric": segmentation mIoU, saliency max_f,
classification top1) at the end of training ("value") and its best periodic evaluation ("best"), the task's other
numbers (segmentation pixel accuracy and per-class IoU, saliency MAE and S-measure, classification GAP-FC top-1),
the validation curve (metrics.jsonl), training wall seconds (all sessions, evaluations included), seconds per
iteration (evaluations excluded), evaluation seconds, parameters.

Per experiment, over its seeds: n, mean, spread (min..max, standard deviation), mean s/it, and
- curve: the last evaluation minus the mean of the evaluations in the last third of training before it; "flat"
  within 1 point (0.01), else "still rising" (or "falling");
- verdict against the suite's baseline, d = mean(experiment) - mean(baseline) (key metrics: higher is better),
  noise = the larger of the two arms' seed ranges (max - min): "better by D (holds)" if d > noise, "worse by D
  (does not hold)" if d < -noise, else "undecided (|d| within the seed spread N)"; "undecided (one seed)" when either
  arm has fewer than two seeds. An ablation arm (PFA without CA / SA) judges the removed part: worse than the
  baseline is "the removed part helps: holds". A claim is decided at a budget where the baseline's curve is flat.

Written to RESULTS_DIR (default benchmarks/results): compare_<suite>.json (runs and aggregates), compare_<suite>.md
(the aggregate table, then the per-run table) and compare_<suite>_curves.png (the validation key metric against the
step, one line per run: colour per experiment, line style per seed). Rows already there from the same suite, base
config and overrides are kept (a --only or --seeds run adds or replaces its runs' rows).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from contextseg.config import Config, load_config, parse_overrides
from contextseg.losses import SEGMENTATION_WEIGHTS
from contextseg.tasks import declared_task

SUITES = ("heads", "losses", "merges", "saol", "pfa", "stn")
CAMVID_BASE = "configs/camvid/ocr_hrnetv2_w18s_v2.yaml"
DEFAULT_BASE = {"heads": CAMVID_BASE, "losses": CAMVID_BASE, "merges": CAMVID_BASE,
                "saol": "configs/cifar10/saol_resnet20.yaml", "pfa": "configs/ecssd/pfa_vgg16.yaml",
                "stn": "configs/cifar10/gap_resnet20_distorted.yaml"}
BASELINE = {"heads": "fcn", "losses": "ce", "merges": "single", "saol": "gap", "pfa": "full", "stn": "gap"}
# per key metric (summary.json "key_metric"): the final metrics a row records besides the key metric itself
TASK_NUMBERS = {"mIoU": ("mIoU", "pixel_acc", "mean_acc"), "max_f": ("max_f", "mae", "s_measure"),
                "top1": ("top1", "top1_gap")}
FLAT = 0.01  # a curve is flat when its last evaluation is within 1 point of the mean of the last third before it
CAMVID_RARE = [2, 6, 9, 10]  # pole, sign, pedestrian, bicyclist
IGNORED_FOR_SAME_RUN = {"data.num_workers"}  # differences that do not change what a run computes
IGNORED_FOR_REUSE = IGNORED_FOR_SAME_RUN | {"name", "output_dir"}


@dataclass
class Experiment:
    name: str
    overrides: list[str]
    note: str
    default: bool = True  # in the suite without --only / --all
    ablation: bool = False  # removes a part of the baseline: worse than it means the part helps (its claim holds)


def _flow(value) -> str:
    """A YAML flow value for a key=value override: {out: 1.0, aux: 0.4, 'out_s*': 0.4}."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()


def suite_experiments(suite: str, base: Config, copy_paste_classes=CAMVID_RARE,
                      train_scales=(0.5, 1.0)) -> list[Experiment]:
    """The experiments of ``suite`` as override lists on ``base`` (the base config with the user's overrides)."""
    if suite == "heads":
        notes = {
            "fcn": "HRNetV2 FCN head (concat, 1x1 conv-BN-ReLU, classifier)",
            "psp": "pyramid pooling, bins 1/2/3/6",
            "aspp": "DeepLab v3 ASPP (rates rescaled to the stride-4 map) + image pooling",
            "nonlocal": "self-attention (non-local) head, mmseg NLHead layout",
            "ocr": "object-contextual representations (+ aux soft-region loss)",
        }
        # DANet's three losses, equal weights
        danet_weights = {**(base.loss.weights or SEGMENTATION_WEIGHTS), "pam": 1.0, "cam": 1.0}
        return [Experiment(arch, [f"model.arch={arch}"], note) for arch, note in notes.items()] + [
            Experiment("danet", ["model.arch=danet", f"loss.weights={_flow(danet_weights)}"],
                       "dual attention (position + channel), losses on out, pam, cam"),
            Experiment("segtr", ["model.arch=segtr"], "OCR as a Segmentation Transformer (8 heads, layer norm, FFN, "
                       "query self-attention; + aux soft-region loss)", default=False)]
    if suite == "losses":
        cp = f"data.mix_kwargs={_flow({'classes': [int(c) for c in copy_paste_classes]})}"
        cut = ["data.mix=cutmix", "data.mix_prob=0.5", "data.mix_kwargs={alpha: 1.0}"]
        paste = ["data.mix=copy_paste", "data.mix_prob=0.5", cp]
        return [
            Experiment("ce", ["loss.name=ce"], "cross-entropy"),
            Experiment("ohem", ["loss.name=ohem", "loss.kwargs={thresh: 0.9, min_kept: 131072}"],
                       "OHEM CE on out, CE on aux (official: p < 0.9, at least 131072 pixels per batch)"),
            Experiment("focal", ["loss.name=focal", "loss.kwargs={gamma: 2.0}"], "focal loss, gamma 2"),
            Experiment("ce_mfb", ["loss.name=ce", "loss.kwargs={class_weights: median_frequency}"],
                       "CE with median-frequency class weights (SegNet)"),
            Experiment("ce_cutmix", ["loss.name=ce", *cut], "CE + CutMix (p 0.5, alpha 1)"),
            Experiment("ce_copy_paste", ["loss.name=ce", *paste],
                       f"CE + Copy-Paste of classes {list(copy_paste_classes)} (p 0.5)"),
            Experiment("ohem_cutmix", ["loss.name=ohem", "loss.kwargs={thresh: 0.9, min_kept: 131072}", *cut],
                       "OHEM + CutMix", default=False),
            Experiment("ohem_copy_paste", ["loss.name=ohem", "loss.kwargs={thresh: 0.9, min_kept: 131072}", *paste],
                       "OHEM + Copy-Paste", default=False),
            Experiment("focal_copy_paste", ["loss.name=focal", "loss.kwargs={gamma: 2.0}", *paste],
                       "focal + Copy-Paste", default=False),
        ]
    if suite == "merges":
        scales = [float(s) for s in train_scales]
        # Per-scale supervision weight ("out_s*", each scale's own logits) as each merge's reference trains it; the
        # merged "out" keeps 1.0 and OCR's merged "aux" the base config's weight (NVIDIA: 0.4 on the merged aux).
        per_scale = {
            # Attention to Scale (Chen et al. 2016, Sec. 3.3 "extra supervision"): the merged output and every
            # scale's output each get a softmax cross-entropy of the same weight; the Caffe net of its attention
            # model (as redistributed in LIP_SSL human/config/no-ssl/train.prototxt) has SoftmaxWithLoss on
            # fc8_fusion and on each scale's fc8, all with the default loss_weight 1.
            "attention": 1.0,
            # NVIDIA semantic-segmentation: scripts/train_cityscapes.yml (and _sota.yml) supervised_mscale_loss_wt
            # 0.05 (config.py LOSS.SUPERVISED_MSCALE_WT default 0); network/ocrnet.py MscaleOCR.two_scale_forward
            # adds 0.05 * loss(pred_05x upsampled) + 0.05 * loss(pred_10x) to the loss of the merged prediction.
            "hierarchical": 0.05,
            # avg / max have no reference of their own: Attention to Scale's average- and max-pooling baselines,
            # trained with the same extra supervision as its attention, so the three stay comparable.
            "avg": 1.0,
            "max": 1.0,
        }
        source = {
            "attention": "Attention to Scale Sec. 3.3: merged and per-scale losses of equal weight",
            "hierarchical": "NVIDIA scripts/train_cityscapes.yml supervised_mscale_loss_wt",
            "avg": "as Attention to Scale's pooling baselines with extra supervision",
            "max": "as Attention to Scale's pooling baselines with extra supervision",
        }

        def ms(merge):
            kwargs = {**base.model.kwargs, "multiscale": {"scales": scales, "merge": merge}}
            weights = {**(base.loss.weights or SEGMENTATION_WEIGHTS), "out_s*": per_scale[merge]}
            return [f"model.kwargs={_flow(kwargs)}", f"loss.weights={_flow(weights)}"]

        def supervision(merge):
            return f"per-scale supervision {per_scale[merge]} ({source[merge]})"

        return [
            Experiment("single", [], "one scale (the base config); avg/max over scales at inference: "
                                     "benchmarks/multiscale_eval.py"),
            Experiment("attention", ms("attention"), f"Attention to Scale over {scales}, {supervision('attention')}"),
            Experiment("hierarchical", ms("hierarchical"),
                       f"hierarchical multi-scale attention (Tao et al.) over {scales}, {supervision('hierarchical')}"),
            Experiment("avg", ms("avg"), f"trained with the average over {scales}, {supervision('avg')}",
                       default=False),
            Experiment("max", ms("max"), f"trained with the max over {scales}, {supervision('max')}",
                       default=False),
        ]
    if suite == "saol":
        def weights(attention, spatial_logits, gap):  # a zero weight drops the term (SAOLLoss)
            terms = {"out": 1.0, "attention": attention, "spatial_logits": spatial_logits, "gap": gap}
            return f"loss.weights={_flow(terms)}"

        return [
            # loss.name=ce is the SAOL loss with {out: 1.0} (CutMix CE on "out", the GAP-FC logits of a gap model);
            # no loss.kwargs: the same config as configs/cifar10/gap_resnet20.yaml
            Experiment("gap", ["model.arch=gap", "loss.name=ce", "loss.weights={out: 1.0}", "loss.kwargs={}"],
                       "GAP-FC output layer, CutMix CE (the baseline)"),
            Experiment("saol", [], "SAOL, all terms: CutMix CE + L_ss1 + L_ss2 + L_SD (the base config)"),
            Experiment("saol_no_ss", [weights(0.0, 0.0, 1.0)], "SAOL without the self-supervised L_ss1, L_ss2"),
            Experiment("saol_no_sd", [weights(1.0, 1.0, 0.0)], "SAOL without the self-distillation L_SD"),
            Experiment("saol_ce", ["loss.weights={out: 1.0}"], "SAOL with the CutMix CE alone"),
        ]
    if suite == "pfa":
        def attention(**switches):
            return [f"model.kwargs={_flow({**base.model.kwargs, **switches})}"]

        return [
            Experiment("full", [], "PFA, channel and spatial attention (the base config)"),
            Experiment("no_ca", attention(channel_attention=False), "PFA without channel attention (CA)",
                       ablation=True),
            Experiment("no_sa", attention(spatial_attention=False), "PFA without spatial attention (SA)",
                       ablation=True),
            Experiment("no_attention", attention(channel_attention=False, spatial_attention=False),
                       "PFA without CA and SA", ablation=True),
        ]
    if suite == "stn":
        return [
            Experiment("gap", [], "GAP-FC on randomly rotated, scaled and shifted CIFAR-10 (the base config)"),
            Experiment("stn", [f"model.kwargs={_flow({**base.model.kwargs, 'stn': {'mode': 'affine'}})}"],
                       "the same with a spatial transformer (affine) before the backbone"),
        ]
    raise SystemExit(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")


@dataclass
class Run:
    """One (experiment, seed) of a suite: its directory name (``key``) and its full override list."""
    exp: Experiment
    seed: int
    key: str
    overrides: list[str]
    run_dir: Path


def run_key(name: str, seed: int, base_seed: int) -> str:
    """The run's directory name: the experiment's for the base config's seed (as without --seeds), NAME@seedS else."""
    return name if seed == base_seed else f"{name}@seed{seed}"


def plan_runs(suite: str, experiments: list[Experiment], seeds: list[int], base_seed: int,
              user_overrides: list[str], runs_root: Path) -> list[Run]:
    """Every (experiment, seed): the experiment's overrides, then the user's (they win), then the seed (another
    than the base config's) and where the run goes."""
    runs = []
    for exp in experiments:
        for seed in seeds:
            key = run_key(exp.name, seed, base_seed)
            run_dir = runs_root / suite / key
            seed_ov = [] if seed == base_seed else [f"seed={seed}"]
            name = f"compare_{suite}_{exp.name}" + ("" if seed == base_seed else f"_seed{seed}")
            ov = [*exp.overrides, *user_overrides, *seed_ov, f"output_dir={run_dir}", f"name={name}"]
            runs.append(Run(exp, seed, key, ov, run_dir))
    return runs


# ----------------------------------------------------------------------------- config bookkeeping


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs" and k != "weights" and k != "mix_kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _normalized(cfg_dict: dict) -> dict:
    """Flat keys; the defaults a run resolves (task from the dataset, loss.weights None = the segmentation
    default) written out, so a run saved before or after they were spelled out compares equal."""
    flat = _flat(yaml.safe_load(yaml.safe_dump(cfg_dict, sort_keys=True)))
    if flat.get("task") is None and "data.dataset" in flat:
        flat["task"] = declared_task(flat["data.dataset"])
    if flat.get("task") == "segmentation" and flat.get("loss.weights") is None:
        flat["loss.weights"] = dict(SEGMENTATION_WEIGHTS)
    return flat


def config_diff(a: dict, b: dict, ignore=()) -> list[str]:
    """Dotted keys whose values differ between two config dicts (as written to config.yaml)."""
    fa, fb = _normalized(a), _normalized(b)
    return sorted(k for k in set(fa) | set(fb) if k not in ignore and fa.get(k) != fb.get(k))


def _saved_config(run_dir: Path) -> dict | None:
    """A run's config.yaml resolved through today's Config, so keys added to Config since (with their defaults)
    do not make an old run look different; the raw file when it no longer loads."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        return load_config(path).to_dict()
    except Exception:
        with open(path) as f:
            return yaml.safe_load(f)


def find_reusable(cfg: Config, runs_root: Path, exclude: Path) -> Path | None:
    """A finished run under runs_root/*/* with the same resolved config (name, output_dir aside)."""
    want = cfg.to_dict()
    for summary in sorted(runs_root.glob("*/*/summary.json")):
        run_dir = summary.parent
        if run_dir.resolve() == exclude.resolve():
            continue
        saved = _saved_config(run_dir)
        if saved is not None and not config_diff(saved, want, IGNORED_FOR_REUSE):
            return run_dir
    return None


def find_reusable_row(cfg: Config, results_dir: Path, suite: str) -> tuple[str, dict] | None:
    """A finished row of another suite's table in results_dir (compare_*.json) whose config, resolved from that
    table's base, its overrides and the row's own, equals ``cfg`` (name, output_dir aside): a run trained on another
    machine, whose run folder is not here, still counts once. -> ("compare_losses.json: ce@seed1", row) or None."""
    want = cfg.to_dict()
    for path in sorted(results_dir.glob("compare_*.json")):
        if path.name == f"compare_{suite}.json":
            continue
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for row in report.get("rows", []):
            if row.get("status") == "failed" or row.get("step") != cfg.train.iters or row.get("reused_from"):
                continue
            seed = [] if row.get("seed") is None else [f"seed={row['seed']}"]
            try:
                theirs = load_config(report["base"], [*row["overrides"], *report["overrides"], *seed]).to_dict()
            except Exception:  # noqa: BLE001 - a table of an older config layout is simply not reused
                continue
            if not config_diff(theirs, want, IGNORED_FOR_REUSE):
                return f"{path}: {row.get('run', row['name'])}", row
    return None


# ----------------------------------------------------------------------------- collected numbers


def timing_from_log(path: Path) -> dict:
    """Training time from OUTPUT/metrics.jsonl over every session of a (possibly resumed) run.

    Train records carry "time" (seconds since the session started) and "step"; val records "eval_seconds". A session
    starts where "time" falls back. Between two train records the evaluations logged there are subtracted, so
    s_per_iter is the pure training step (data loading and checkpoint writes included)."""
    out = {"train_wall_s": None, "s_per_iter": None, "eval_s_total": None, "eval_s_last": None, "steps_timed": 0}
    if not path.is_file():
        return out
    train_s = eval_s = 0.0
    steps = 0
    prev_time, prev_step, pending_eval = 0.0, 0, 0.0
    eval_last = None
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("kind") == "val":
            e = float(r.get("eval_seconds") or 0.0)
            eval_s += e
            pending_eval += e
            eval_last = e
            prev_step = max(prev_step, int(r.get("step", prev_step)))
        elif r.get("kind") == "train" and "time" in r:
            t, s = float(r["time"]), int(r["step"])
            if t < prev_time:  # a new session (resume): its clock starts at 0; the evaluations logged since the
                prev_time, pending_eval = 0.0, 0.0  # last train record ran in the old session
            dt = t - prev_time - pending_eval
            if s > prev_step and dt > 0:
                train_s += dt
                steps += s - prev_step
            prev_time, prev_step, pending_eval = t, s, 0.0
    if steps:
        out.update(train_wall_s=train_s + eval_s, s_per_iter=train_s / steps, steps_timed=steps)
    out.update(eval_s_total=eval_s if eval_last is not None else None, eval_s_last=eval_last)
    return out


def count_params(cfg: Config, num_classes: int | None) -> int | None:
    """Parameters of the model the config builds (on the meta device: no memory, no time)."""
    import torch

    from contextseg.models import create_model

    m = cfg.model
    try:
        with torch.device("meta"):
            model = create_model(m.arch, backbone=m.backbone, num_classes=m.num_classes or num_classes or 19,
                                 in_channels=m.in_channels, **m.kwargs)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - a count is a nicety
        return None


def curve_from_log(path: Path, key: str) -> list[list]:
    """[[step, value], ...] of the validation ``key`` in OUTPUT/metrics.jsonl, by step (an evaluation repeated
    after a resume counts once, the later one)."""
    points: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("kind") == "val" and isinstance(r.get(key), (int, float)) and "step" in r:
                points[int(r["step"])] = float(r[key])
    return [[s, points[s]] for s in sorted(points)]


def curve_change(points) -> float | None:
    """The last evaluation minus the mean of the evaluations in the last third of training before it (the one
    just before it when none falls there); None with fewer than two evaluations."""
    if len(points) < 2:
        return None
    last_step, last = points[-1]
    window = [v for s, v in points[:-1] if s >= last_step * 2 / 3] or [points[-2][1]]
    return last - sum(window) / len(window)


def curve_state(change: float | None) -> str:
    """"flat" when ``curve_change`` is within FLAT (1 point), "still rising" / "falling" beyond it."""
    if change is None:
        return "one evaluation"
    if abs(change) <= FLAT:
        return "flat"
    return "still rising" if change > 0 else "falling"


def collect(run: Run, cfg: Config, run_dir: Path, status: str, **extra) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary.get("final") or {}
    key = summary.get("key_metric") or "mIoU"
    per_class = final.get("per_class_iou") or {}
    num_classes = 1 if key == "max_f" else len(per_class or final.get("per_class_acc") or {}) or None
    curve = curve_from_log(run_dir / "metrics.jsonl", key)
    change = curve_change(curve)
    amp = (summary.get("precision") or {}).get("amp")  # train.amp as resolved: none (fp32), bf16 or fp16
    row = {
        "name": run.exp.name, "run": run.key, "seed": run.seed, "status": status, "note": run.exp.note,
        "overrides": run.exp.overrides,
        "run_dir": str(run_dir), "checkpoint": str(run_dir / "last.pt"), "best_checkpoint": str(run_dir / "best.pt"),
        "step": summary.get("step"), "iters": cfg.train.iters,
        "key_metric": key, "value": final.get(key), "best": summary.get("best"),
        **{k: final.get(k) for k in TASK_NUMBERS.get(key, ())},
        "params": count_params(cfg, num_classes),
        **timing_from_log(run_dir / "metrics.jsonl"),
        "curve": curve, "curve_change": change, "curve_state": curve_state(change),
        "precision": {"none": "fp32"}.get(amp, amp), "device": summary.get("device"),
        **extra,
    }
    if key == "mIoU":  # the segmentation table's columns
        row.update(best_mIoU=summary.get("best"), per_class_iou=per_class)
    if row["train_wall_s"] is None:
        row["train_wall_s"] = summary.get("train_seconds")
    return row


def _value(row: dict, key: str):
    """The final key metric of a row (rows written before "value" existed: the segmentation "mIoU")."""
    return row.get("value", row.get(key))


def verdict(values: list[float], base_values: list[float], ablation: bool = False) -> str:
    """An experiment's seeds against the baseline's (higher is better): decided only beyond the seed spread. For an
    ablation (the baseline less one part) the claim is the part's: it holds when the ablation is worse."""
    if len(values) < 2 or len(base_values) < 2:
        return "undecided (one seed)"
    d = statistics.mean(values) - statistics.mean(base_values)
    noise = max(max(values) - min(values), max(base_values) - min(base_values))
    if d > noise:
        return f"better by {100 * d:.2f} ({'the removed part hurts: does not hold' if ablation else 'holds'})"
    if d < -noise:
        return f"worse by {100 * -d:.2f} ({'the removed part helps: holds' if ablation else 'does not hold'})"
    return f"undecided (|d| {100 * abs(d):.2f} within the seed spread {100 * noise:.2f})"


def difference_ci(values: list[float], base_values: list[float], level: float = 0.95) -> dict | None:
    """The difference of the means (experiment - baseline) with its Welch confidence interval and two-sided p-value
    (unequal variances); None with fewer than two seeds in either arm. Reported beside the verdict, not instead of
    it: with 2-4 seeds the t interval is wide, and seeds are not a random sample of training noise in every sense."""
    from scipy import stats

    if len(values) < 2 or len(base_values) < 2:
        return None
    va, vb = statistics.variance(values) / len(values), statistics.variance(base_values) / len(base_values)
    d = statistics.mean(values) - statistics.mean(base_values)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"d": d, "lo": d, "hi": d, "p": 0.0 if d else 1.0, "df": None}
    df = (va + vb) ** 2 / (va ** 2 / (len(values) - 1) + vb ** 2 / (len(base_values) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return {"d": d, "lo": d - half, "hi": d + half, "p": float(2 * stats.t.sf(abs(d) / se, df)), "df": df}


def _curve_cell(runs: list[dict]) -> str:
    """"flat" when every run's curve is; else each run's state that is not, with its change in points."""
    known = [r for r in runs if r.get("curve_change") is not None]
    if not known:
        return "-"
    off = [r for r in known if curve_state(r["curve_change"]) != "flat"]
    if not off:
        return "flat"
    return "; ".join(f"seed {r.get('seed')} {curve_state(r['curve_change'])} ({100 * r['curve_change']:+.1f})"
                     for r in off)


def aggregate(rows: list[dict], order: list[str], baseline: str, key: str, ablations=frozenset()) -> list[dict]:
    """Per experiment (in ``order``) over its finished runs: n, seeds, mean, std, min, max, mean s/it, curve, and
    the verdict against ``baseline`` (for the names in ``ablations``, an ablation's verdict)."""
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("status") != "failed" and isinstance(_value(r, key), (int, float)):
            by_name.setdefault(r["name"], []).append(r)
    base_values = [_value(r, key) for r in by_name.get(baseline, [])]
    out = []
    for name in [n for n in order if n in by_name] + [n for n in by_name if n not in order]:
        runs = by_name[name]
        values = [_value(r, key) for r in runs]
        times = [r["s_per_iter"] for r in runs if r.get("s_per_iter") is not None]
        if name == baseline:
            judged = "baseline"
        elif not base_values:
            judged = f"- (no {baseline} run)"
        else:
            judged = verdict(values, base_values, ablation=name in ablations)
        out.append({"name": name, "key_metric": key, "n": len(values), "seeds": [r.get("seed") for r in runs],
                    "mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
                    "min": min(values), "max": max(values),
                    "s_per_iter": statistics.mean(times) if times else None,
                    "curve": _curve_cell(runs), "verdict": judged,
                    "difference": None if name == baseline else difference_ci(values, base_values)})
    return out


def plot_curves(path: Path, suite: str, rows: list[dict], key: str) -> bool:
    """The validation key metric against the step, one line per run: colour per experiment, style per seed."""
    runs = [r for r in rows if r.get("curve")]
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["name"] for r in runs))
    seeds = sorted({r.get("seed") for r in runs}, key=lambda s: (s is None, s or 0))
    styles = ["-", "--", ":", "-."]
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in runs:
        steps, values = zip(*r["curve"])
        ax.plot(steps, [100 * v for v in values], marker="o", ms=3, color=colours(names.index(r["name"]) % 10),
                linestyle=styles[seeds.index(r.get("seed")) % len(styles)], label=f"{r['name']} seed {r.get('seed')}")
    ax.set(title=f"compare {suite}: validation {key} (%)", xlabel="step", ylabel=f"{key} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- tables


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


# per key metric: the per-run table's columns after the key metric and its best (row key, header)
EXTRA_COLUMNS = {"mIoU": [("pixel_acc", "pixel acc")], "max_f": [("mae", "MAE %"), ("s_measure", "S-measure")],
                 "top1": [("top1_gap", "GAP-FC top-1")]}


def key_metric_of(rows: list[dict]) -> str:
    """The suite's key metric: the first finished row's (rows from before rows recorded it: segmentation mIoU)."""
    return next((r["key_metric"] for r in rows if r.get("key_metric")), "mIoU")


def _pct2(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _difference_cell(diff: dict | None) -> str:
    if diff is None:
        return "-"
    return f"{100 * diff['d']:+.2f} [{100 * diff['lo']:+.2f}, {100 * diff['hi']:+.2f}], p {diff['p']:.3f}"


def aggregate_markdown(aggregates: list[dict], key: str, baseline: str) -> list[str]:
    head = ["experiment", "n", "seeds", f"**mean {key}**", "min..max", "std", "s/it", "curve",
            f"d vs {baseline} [95% CI], Welch p", f"verdict vs {baseline}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in aggregates:
        seeds = ", ".join("?" if x is None else str(x) for x in g["seeds"])  # "?": a row from before seeds
        cells = [g["name"], str(g["n"]), seeds, f"**{_pct2(g['mean'])}**", f"{_pct2(g['min'])}..{_pct2(g['max'])}",
                 _pct2(g["std"]),
                 "-" if g["s_per_iter"] is None else f"{g['s_per_iter']:.2f}", g["curve"],
                 _difference_cell(g.get("difference")), g["verdict"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")  # the verdict's |d|
    return lines


def markdown(suite: str, rows: list[dict], base: str, user_overrides: list[str], aggregates: list[dict],
             baseline: str) -> str:
    key = key_metric_of(rows)
    extras = EXTRA_COLUMNS.get(key, [])
    classes: list[str] = []
    for r in rows:
        for c in r.get("per_class_iou") or {}:
            if c not in classes:
                classes.append(c)
    what = f"Suite `{suite}` on `{base}`" + (f" with `{' '.join(user_overrides)}`" if user_overrides else "")
    lines = [what + f": val {key} % at the end of training, mean over seeds (spread: min..max and standard "
             f"deviation; curve: the last evaluation minus the mean of the last third of training before it, flat "
             f"within 1 point; verdict: the difference to `{baseline}` decides only beyond the larger seed range "
             f"(max - min) of the two). Curves: `compare_{suite}_curves.png`.", "",
             *aggregate_markdown(aggregates, key, baseline), "",
             f"Runs: val {key} % at the end of training (best = best periodic evaluation).", ""]
    lines += conditions_warning(rows)
    head = ["experiment", f"**{key}**", "best", *(h for _, h in extras), *classes, "params M", "s/it",
            "train wall min", "precision"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        label = r.get("run", r["name"])
        if r["status"] == "failed":
            lines.append(f"| {label} | failed: {r.get('error', '')[:80]} |" + " |" * (len(head) - 2))
            continue
        per = r.get("per_class_iou") or {}
        cells = [label, f"**{_pct(_value(r, key))}**", _pct(r.get("best", r.get("best_mIoU"))),
                 *(_pct(r.get(k)) for k, _ in extras), *(_pct(per.get(c)) for c in classes),
                 "-" if r.get("params") is None else f"{r['params'] / 1e6:.2f}",
                 "-" if r.get("s_per_iter") is None else f"{r['s_per_iter']:.2f}",
                 "-" if r.get("train_wall_s") is None else f"{r['train_wall_s'] / 60:.1f}",
                 r.get("precision") or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| experiment | overrides | what | runs |", "|---|---|---|---|"]
    for name in dict.fromkeys(r["name"] for r in rows):
        runs = [r for r in rows if r["name"] == name]
        ov = " ".join(f"`{o}`" for o in runs[0]["overrides"]) or "(base config)"
        where = "; ".join(f"reused {r['reused_from']}" if r.get("reused_from") else r.get("run_dir", "")
                          for r in runs)
        lines.append(f"| {name} | {ov} | {runs[0]['note']} | {where} |")
    return "\n".join(lines) + "\n"


def conditions_warning(rows: list[dict]) -> list[str]:
    """Markdown lines warning that the rows trained at different precisions or on different devices (a difference
    in the table may then come from those, not from the method); none when every row ran alike."""
    ok = [r for r in rows if r.get("status") != "failed"]
    lines = []
    for field, what in (("precision", "precisions"), ("device", "devices")):
        seen = sorted({str(r.get(field)) for r in ok if r.get(field)})
        unknown = [r.get("run", r["name"]) for r in ok if not r.get(field)]
        if len(seen) > 1:
            lines.append(f"**Mixed {what}**: {'; '.join(seen)}. A difference between rows may come from that, "
                         f"not from the method alone.")
        elif unknown and seen:
            lines.append(f"Rows {', '.join(unknown)} do not record their {field} (trained before it was recorded).")
    return lines + [""] if lines else []


def _shell(s: str) -> str:
    return s if all(ch.isalnum() or ch in "._=/-:,@" for ch in s) else "'" + s.replace("'", "'\\''") + "'"


# ----------------------------------------------------------------------------- main


def run_experiment(run: Run, cfg: Config, runs_root: Path, rerun: bool, progress: bool,
                   results_dir: Path | None = None, suite: str = "") -> dict:
    from contextseg.tasks import run_training as train

    run_dir = Path(cfg.output_dir)
    want = cfg.to_dict()
    saved = _saved_config(run_dir)
    if saved is not None and not rerun:
        diff = config_diff(saved, want, IGNORED_FOR_SAME_RUN)
        if diff:
            raise RuntimeError(f"config differs in {', '.join(diff)} from the run in {run_dir}; pass --rerun "
                               f"{run.key} to train it again, or another --runs-root")
    if rerun:
        for f in ("summary.json", "last.pt", "best.pt", "metrics.jsonl"):
            (run_dir / f).unlink(missing_ok=True)
    if (run_dir / "summary.json").is_file():
        print(f"[{run.key}] done before: {run_dir}/summary.json")
        return collect(run, cfg, run_dir, "skipped (done)")
    if not rerun and not (run_dir / "last.pt").is_file():
        other = find_reusable(cfg, runs_root, run_dir)
        if other is not None:
            print(f"[{run.key}] the same config finished in {other}: reusing it")
            return collect(run, cfg, other, "reused", reused_from=str(other))
        found = find_reusable_row(cfg, results_dir, suite) if results_dir is not None else None
        if found is not None:
            where, row = found
            print(f"[{run.key}] the same config finished in {where}: reusing its row")
            return {**row, "name": run.exp.name, "run": run.key, "seed": run.seed, "note": run.exp.note,
                    "overrides": run.exp.overrides, "status": "reused", "reused_from": where}
    resume = str(run_dir / "last.pt") if (run_dir / "last.pt").is_file() else None
    print(f"[{run.key}] {'resuming ' + resume if resume else 'training'} -> {run_dir}", flush=True)
    t0 = time.time()
    # a folder without last.pt holds nothing to keep (its config was checked above): a fresh run may replace it
    train(cfg, resume=resume, progress=progress, overwrite=resume is None)
    return collect(run, cfg, run_dir, "resumed" if resume else "trained", session_wall_s=time.time() - t0)


def _seed_list(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _joined_seeds(argv: list[str]) -> list[str]:
    """``--seeds 0 1 train.iters=2000`` -> ``--seeds=0,1 train.iters=2000``: the integers after --seeds are its
    values, the overrides after them stay overrides (argparse's nargs="+" would swallow them)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] != "--seeds":
            out.append(argv[i])
            i += 1
            continue
        j = i + 1
        while j < len(argv) and argv[j].lstrip("-").isdigit():
            j += 1
        out.append("--seeds=" + ",".join(argv[i + 1:j]))
        i = j
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=SUITES)
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every experiment (they win over the "
                                                "experiment's own, with a note)")
    p.add_argument("--base", help="base config (YAML); default per suite: " +
                   ", ".join(f"{s} {b}" for s, b in DEFAULT_BASE.items()))
    p.add_argument("--seeds", type=_seed_list, metavar="S [S ...]",
                   help="one run per experiment and seed (default: the base config's seed); runs of other seeds go "
                        "to NAME@seedS")
    p.add_argument("--only", help="comma-separated experiment names (optional ones included)")
    p.add_argument("--all", action="store_true", help="also the optional experiments of the suite")
    p.add_argument("--rerun", default="", help="comma-separated experiments (all their seeds) or runs (NAME@seedS) "
                                               "to train again from scratch")
    p.add_argument("--runs-root", default="runs/compare", help="runs go to RUNS_ROOT/SUITE/NAME[@seedS]")
    p.add_argument("--results-dir", default="benchmarks/results",
                   help="where compare_SUITE.{json,md} and compare_SUITE_curves.png go")
    p.add_argument("--copy-paste-classes", type=int, nargs="+", default=CAMVID_RARE,
                   help="classes Copy-Paste pastes (default CamVid pole 2, sign 6, pedestrian 9, bicyclist 10)")
    p.add_argument("--train-scales", type=float, nargs="+", default=[0.5, 1.0], help="merges: training pyramid")
    p.add_argument("--baseline", help="the experiment every other is judged against (default per suite: " +
                   ", ".join(f"{s} {b}" for s, b in BASELINE.items()) + ")")
    p.add_argument("--list", action="store_true", help="print the runs and their commands, train nothing")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_intermixed_args(_joined_seeds(sys.argv[1:] if argv is None else argv))
    if a.seeds == []:
        p.error("--seeds needs at least one integer")
    a.base = a.base or DEFAULT_BASE[a.suite]

    base_cfg = load_config(a.base, a.overrides)
    experiments = suite_experiments(a.suite, base_cfg, a.copy_paste_classes, a.train_scales)
    known = {e.name: e for e in experiments}
    if a.baseline is not None and a.baseline not in known:
        p.error(f"--baseline {a.baseline!r} is not an experiment of suite {a.suite!r}; it has: {', '.join(known)}")
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            p.error(f"unknown experiment(s) {unknown} in suite {a.suite!r}; it has: {', '.join(known)}")
        experiments = [known[n] for n in names]
    elif not a.all:
        experiments = [e for e in experiments if e.default]
    rerun = {n.strip() for n in a.rerun.split(",") if n.strip()}
    runs_root = Path(a.runs_root)
    seeds = list(dict.fromkeys(a.seeds or [base_cfg.seed]))

    user_keys = set(_flat(parse_overrides(a.overrides)))
    for exp in experiments:
        clash = sorted(user_keys & set(_flat(parse_overrides(exp.overrides))))
        if clash:
            print(f"note: [{exp.name}] your override(s) of {', '.join(clash)} replace the experiment's own")
    plans = []
    for run in plan_runs(a.suite, experiments, seeds, base_cfg.seed, a.overrides, runs_root):
        command = " ".join(["contextseg", "train", a.base, *map(_shell, run.overrides)])
        plans.append((run, load_config(a.base, run.overrides), command))
    if a.list:
        for run, cfg, command in plans:
            print(f"{run.key:18s} {run.exp.note}\n    {command}")
        return 0

    rows = []
    for run, cfg, command in plans:
        try:
            row = run_experiment(run, cfg, runs_root, bool({run.exp.name, run.key} & rerun),
                                 progress=not a.no_progress, results_dir=Path(a.results_dir), suite=a.suite)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one failure must not lose the suite
            traceback.print_exc()
            row = {"name": run.exp.name, "run": run.key, "seed": run.seed, "status": "failed",
                   "error": f"{type(exc).__name__}: {exc}", "note": run.exp.note, "overrides": run.exp.overrides,
                   "run_dir": cfg.output_dir}
        row["command"] = command
        rows.append(row)
        print(f"[{run.key}] {row['status']}: val {row.get('key_metric', '')} {_pct(row.get('value'))}", flush=True)

    out_dir = Path(a.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _table_lock(out_dir / f".compare_{a.suite}.lock"):  # runs side by side merge into one table in turn
        rows = _with_earlier_rows(out_dir / f"compare_{a.suite}.json", a, rows, [e.name for e in known.values()])
        key, baseline = key_metric_of(rows), a.baseline or BASELINE[a.suite]
        aggregates = aggregate(rows, list(known), baseline, key, {e.name for e in known.values() if e.ablation})
        curves = out_dir / f"compare_{a.suite}_curves.png"
        plotted = plot_curves(curves, a.suite, rows, key)
        report = {"suite": a.suite, "base": a.base, "overrides": a.overrides, "seeds": seeds, "key_metric": key,
                  "baseline": baseline, "aggregates": aggregates, "curves": str(curves) if plotted else None,
                  "rows": rows}
        md = markdown(a.suite, rows, a.base, a.overrides, aggregates, baseline)
        _write_atomic(out_dir / f"compare_{a.suite}.json", json.dumps(report, indent=2))
        _write_atomic(out_dir / f"compare_{a.suite}.md", md)
    print()
    print(md)
    for g in aggregates:
        print(f"[{g['name']}] validation curve: {g['curve']}")
    print(f"saved {out_dir / f'compare_{a.suite}.json'} and .md" + (f", curves {curves}" if plotted else ""))
    return 1 if any(r["status"] == "failed" for r in rows) else 0


@contextlib.contextmanager
def _table_lock(path: Path):
    """An exclusive lock on ``path`` (POSIX flock; no lock where fcntl is missing, e.g. Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _with_earlier_rows(path: Path, a, rows: list[dict], order: list[str]) -> list[dict]:
    """This run's rows plus the rows of other runs already in ``path`` from the same suite, base config and
    overrides (so ``--only danet`` or ``--seeds 1`` adds rows instead of replacing the table), in the suite's
    order, seeds ascending. A run skipped as done keeps its earlier row's status and session_wall_s."""
    if not path.is_file():
        return rows
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return rows
    if (earlier.get("suite"), earlier.get("base"), earlier.get("overrides")) != (a.suite, a.base, a.overrides):
        return rows
    before = {r.get("run", r.get("name")): r for r in earlier.get("rows", [])}  # before seeds "name" was the run
    for r in rows:  # a finished run skipped now keeps how it was made (trained, resumed) and its session's time
        old = before.get(r.get("run"), {})
        if r.get("status") == "skipped (done)" and old.get("status") in ("trained", "resumed") \
                and old.get("run_dir") == r.get("run_dir"):
            r.update({k: old[k] for k in ("status", "session_wall_s") if k in old})
    runs = {r.get("run", r.get("name")) for r in rows}
    merged = rows + [r for k, r in before.items() if k not in runs]
    rank = {n: i for i, n in enumerate(order)}
    return sorted(merged, key=lambda r: (rank.get(r.get("name"), len(rank)), r.get("seed") is not None,
                                         r.get("seed") or 0))


if __name__ == "__main__":
    sys.exit(main())
