"""Run a named suite of training experiments at one fixed budget and collect one table.

    .venv/bin/python benchmarks/compare.py heads  --base configs/camvid/ocr_hrnetv2_w18s_v2.yaml train.iters=1000
    .venv/bin/python benchmarks/compare.py losses --base configs/camvid/ocr_hrnetv2_w18s_v2.yaml train.iters=1000
    .venv/bin/python benchmarks/compare.py merges --base configs/camvid/ocr_hrnetv2_w18s_v2.yaml train.iters=1000
    .venv/bin/python benchmarks/compare.py heads --list                     # the experiments and their overrides
    .venv/bin/python benchmarks/compare.py heads --base CFG --only fcn,ocr  # a subset ("--all" adds the optional ones)

Suites (each experiment = the base config + its overrides + your key=value overrides, which apply to all):

    heads   fcn, psp, aspp, nonlocal, ocr, danet   model.arch=...; on HRNet every head uses all four maps (their
                                                   default in_index); OCR has an auxiliary output ("aux"), DANet
                                                   two ("pam", "cam", weight 1 each as its code)
    losses  ce, ohem, focal, ce_mfb, ce_cutmix,    loss.name / loss.kwargs / data.mix; copy_paste pastes the classes of
            ce_copy_paste  (+ ohem_cutmix,         --copy-paste-classes (default: CamVid's rare pole 2, sign 6,
            ohem_copy_paste, focal_copy_paste)     pedestrian 9, bicyclist 10)
    merges  single, attention, hierarchical        MultiScale training over --train-scales (0.5 1.0); per-scale
            (+ avg, max)                           supervision loss.weights "out_s*" as each merge's reference:
                                                   attention 1.0 (Attention to Scale: each scale's loss weighs
                                                   as much as the merged one), hierarchical 0.05 (NVIDIA's
                                                   supervised_mscale_loss_wt), avg / max 1.0 (Attention to
                                                   Scale's pooling baselines with its extra supervision)

Each experiment trains in OUTPUT = RUNS_ROOT/<suite>/<name> (default runs/compare/...). It is
- skipped when OUTPUT/summary.json exists and OUTPUT/config.yaml is the config it would run now;
- resumed (--resume OUTPUT/last.pt, exact) when last.pt exists without summary.json, so a killed suite goes on where
  it stopped when run again;
- reused from another finished run under RUNS_ROOT whose resolved config is identical except name and output_dir
  (e.g. losses/ce = heads/ocr = merges/single for one base config): no training twice;
- refused when OUTPUT holds a run of another config (the keys that differ are named): pass --rerun NAME,... to
  train it again from scratch.
A failing experiment is recorded with its error and the suite goes on (exit status 1 at the end).

Collected per experiment: final val mIoU (at the budget) and the best one, pixel accuracy, per-class IoU, training
wall seconds (all sessions, evaluations included), seconds per iteration (evaluations excluded; from metrics.jsonl),
evaluation seconds, parameters. Written to RESULTS_DIR/compare_<suite>.json and .md (default benchmarks/results);
rows already there from the same suite, base config and overrides are kept (a --only run adds or replaces its rows).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from contextseg.config import Config, load_config, parse_overrides
from contextseg.losses import SEGMENTATION_WEIGHTS
from contextseg.tasks import declared_task

SUITES = ("heads", "losses", "merges")
CAMVID_RARE = [2, 6, 9, 10]  # pole, sign, pedestrian, bicyclist
IGNORED_FOR_SAME_RUN = {"data.num_workers"}  # differences that do not change what a run computes
IGNORED_FOR_REUSE = IGNORED_FOR_SAME_RUN | {"name", "output_dir"}


@dataclass
class Experiment:
    name: str
    overrides: list[str]
    note: str
    default: bool = True  # in the suite without --only / --all


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
        danet_weights = {**(base.loss.weights or SEGMENTATION_WEIGHTS), "pam": 1.0, "cam": 1.0}  # DANet's three losses, equal weights
        return [Experiment(arch, [f"model.arch={arch}"], note) for arch, note in notes.items()] + [
            Experiment("danet", ["model.arch=danet", f"loss.weights={_flow(danet_weights)}"],
                       "dual attention (position + channel), losses on out, pam, cam")]
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
    raise SystemExit(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")


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


def collect(name: str, exp: Experiment, cfg: Config, run_dir: Path, status: str, **extra) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary.get("final") or {}
    per_class = final.get("per_class_iou") or {}
    row = {
        "name": name, "status": status, "note": exp.note, "overrides": exp.overrides,
        "run_dir": str(run_dir), "checkpoint": str(run_dir / "last.pt"), "best_checkpoint": str(run_dir / "best.pt"),
        "step": summary.get("step"), "iters": cfg.train.iters,
        "mIoU": final.get("mIoU"), "best_mIoU": summary.get("best"),
        "pixel_acc": final.get("pixel_acc"), "mean_acc": final.get("mean_acc"),
        "per_class_iou": per_class,
        "params": count_params(cfg, len(per_class) or None),
        **timing_from_log(run_dir / "metrics.jsonl"),
        **extra,
    }
    if row["train_wall_s"] is None:
        row["train_wall_s"] = summary.get("train_seconds")
    return row


# ----------------------------------------------------------------------------- tables


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def markdown(suite: str, rows: list[dict], base: str, user_overrides: list[str]) -> str:
    classes: list[str] = []
    for r in rows:
        for c in r.get("per_class_iou") or {}:
            if c not in classes:
                classes.append(c)
    head = ["experiment", "**mIoU**", "best", "pixel acc", *classes, "params M", "s/it", "train wall min"]
    lines = [f"Suite `{suite}` on `{base}`" + (f" with `{' '.join(user_overrides)}`" if user_overrides else "")
             + ": val IoU % at the end of training (best = best periodic evaluation).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] == "failed":
            lines.append(f"| {r['name']} | failed: {r.get('error', '')[:80]} |" + " |" * (len(head) - 2))
            continue
        per = r.get("per_class_iou") or {}
        cells = [r["name"], f"**{_pct(r.get('mIoU'))}**", _pct(r.get("best_mIoU")), _pct(r.get("pixel_acc")),
                 *(_pct(per.get(c)) for c in classes),
                 "-" if r.get("params") is None else f"{r['params'] / 1e6:.2f}",
                 "-" if r.get("s_per_iter") is None else f"{r['s_per_iter']:.2f}",
                 "-" if r.get("train_wall_s") is None else f"{r['train_wall_s'] / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| experiment | overrides | what | run |", "|---|---|---|---|"]
    for r in rows:
        ov = " ".join(f"`{o}`" for o in r["overrides"]) or "(base config)"
        where = f"reused {r['reused_from']}" if r.get("reused_from") else r.get("run_dir", "")
        lines.append(f"| {r['name']} | {ov} | {r['note']} | {where} |")
    return "\n".join(lines) + "\n"


def _shell(s: str) -> str:
    return s if all(ch.isalnum() or ch in "._=/-:," for ch in s) else "'" + s.replace("'", "'\\''") + "'"


# ----------------------------------------------------------------------------- main


def run_experiment(exp: Experiment, cfg: Config, runs_root: Path, rerun: bool, progress: bool) -> dict:
    from contextseg.tasks import run_training as train

    run_dir = Path(cfg.output_dir)
    want = cfg.to_dict()
    saved = _saved_config(run_dir)
    if saved is not None and not rerun:
        diff = config_diff(saved, want, IGNORED_FOR_SAME_RUN)
        if diff:
            raise RuntimeError(f"config differs in {', '.join(diff)} from the run in {run_dir}; pass --rerun "
                               f"{exp.name} to train it again, or another --runs-root")
    if rerun:
        for f in ("summary.json", "last.pt", "best.pt", "metrics.jsonl"):
            (run_dir / f).unlink(missing_ok=True)
    if (run_dir / "summary.json").is_file():
        print(f"[{exp.name}] done before: {run_dir}/summary.json")
        return collect(exp.name, exp, cfg, run_dir, "skipped (done)")
    if not rerun and not (run_dir / "last.pt").is_file():
        other = find_reusable(cfg, runs_root, run_dir)
        if other is not None:
            print(f"[{exp.name}] the same config finished in {other}: reusing it")
            return collect(exp.name, exp, cfg, other, "reused", reused_from=str(other))
    resume = str(run_dir / "last.pt") if (run_dir / "last.pt").is_file() else None
    print(f"[{exp.name}] {'resuming ' + resume if resume else 'training'} -> {run_dir}", flush=True)
    t0 = time.time()
    train(cfg, resume=resume, progress=progress)
    return collect(exp.name, exp, cfg, run_dir, "resumed" if resume else "trained",
                   session_wall_s=time.time() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=SUITES)
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every experiment (they win over the "
                                                "experiment's own, with a note)")
    p.add_argument("--base", default="configs/camvid/ocr_hrnetv2_w18s_v2.yaml", help="base config (YAML)")
    p.add_argument("--only", help="comma-separated experiment names (optional ones included)")
    p.add_argument("--all", action="store_true", help="also the optional experiments of the suite")
    p.add_argument("--rerun", default="", help="comma-separated names to train again from scratch")
    p.add_argument("--runs-root", default="runs/compare", help="experiments go to RUNS_ROOT/SUITE/NAME")
    p.add_argument("--results-dir", default="benchmarks/results", help="where compare_SUITE.{json,md} go")
    p.add_argument("--copy-paste-classes", type=int, nargs="+", default=CAMVID_RARE,
                   help="classes Copy-Paste pastes (default CamVid pole 2, sign 6, pedestrian 9, bicyclist 10)")
    p.add_argument("--train-scales", type=float, nargs="+", default=[0.5, 1.0], help="merges: training pyramid")
    p.add_argument("--list", action="store_true", help="print the experiments and their commands, train nothing")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_intermixed_args(argv)

    base_cfg = load_config(a.base, a.overrides)
    experiments = suite_experiments(a.suite, base_cfg, a.copy_paste_classes, a.train_scales)
    known = {e.name: e for e in experiments}
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

    user_keys = set(_flat(parse_overrides(a.overrides)))
    plans = []
    for exp in experiments:
        run_dir = runs_root / a.suite / exp.name
        clash = sorted(user_keys & set(_flat(parse_overrides(exp.overrides))))
        if clash:
            print(f"note: [{exp.name}] your override(s) of {', '.join(clash)} replace the experiment's own")
        # experiment overrides, then the user's (they win), then where the run goes
        ov = [*exp.overrides, *a.overrides, f"output_dir={run_dir}", f"name=compare_{a.suite}_{exp.name}"]
        cfg = load_config(a.base, ov)
        command = " ".join(["contextseg", "train", a.base, *map(_shell, ov)])
        plans.append((exp, cfg, command))
    if a.list:
        for exp, cfg, command in plans:
            print(f"{exp.name:18s} {exp.note}\n    {command}")
        return 0

    rows = []
    for exp, cfg, command in plans:
        try:
            row = run_experiment(exp, cfg, runs_root, exp.name in rerun, progress=not a.no_progress)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one failure must not lose the suite
            traceback.print_exc()
            row = {"name": exp.name, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "note": exp.note,
                   "overrides": exp.overrides, "run_dir": cfg.output_dir}
        row["command"] = command
        rows.append(row)
        print(f"[{exp.name}] {row['status']}: val mIoU {_pct(row.get('mIoU'))}", flush=True)

    out_dir = Path(a.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = _with_earlier_rows(out_dir / f"compare_{a.suite}.json", a, rows, [e.name for e in known.values()])
    report = {"suite": a.suite, "base": a.base, "overrides": a.overrides, "rows": rows}
    (out_dir / f"compare_{a.suite}.json").write_text(json.dumps(report, indent=2))
    md = markdown(a.suite, rows, a.base, a.overrides)
    (out_dir / f"compare_{a.suite}.md").write_text(md)
    print()
    print(md)
    print(f"saved {out_dir / f'compare_{a.suite}.json'} and .md")
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def _with_earlier_rows(path: Path, a, rows: list[dict], order: list[str]) -> list[dict]:
    """This run's rows plus the rows of other experiments already in ``path`` from the same suite, base config
    and overrides (so ``--only danet`` adds a row instead of replacing the table), in the suite's order."""
    if not path.is_file():
        return rows
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return rows
    if (earlier.get("suite"), earlier.get("base"), earlier.get("overrides")) != (a.suite, a.base, a.overrides):
        return rows
    names = {r["name"] for r in rows}
    merged = rows + [r for r in earlier.get("rows", []) if r.get("name") not in names]
    rank = {n: i for i, n in enumerate(order)}
    return sorted(merged, key=lambda r: rank.get(r.get("name"), len(rank)))


if __name__ == "__main__":
    sys.exit(main())
