"""SSNet's claims (Zeng, Zhuge, Lu & Zhang, ICCV 2019) over seeds, in one resumable command.

    .venv/bin/python benchmarks/ssnet_claim.py --seeds 0 1                     # CamVid + ECSSD at half size
    .venv/bin/python benchmarks/ssnet_claim.py --seeds 0 1 train.iters=1500    # key=value: every training run
    .venv/bin/python benchmarks/ssnet_claim.py --list                          # the steps and their commands

Per seed S, in RUNS_ROOT/ssnet/NAME (NAME@seedS for a seed other than the stage-1 config's):
  stage1          the stage-1 config: CamVid image-level labels jointly with ECSSD saliency masks
  stage1_no_sal   the same without the saliency set: data.kwargs.saliency=null, loss.weights={cls: 1.0, saliency: 0.0}
  pseudo labels   each stage 1's last.pt labels the CamVid training images (the official rule) into NAME/pseudo_labels,
                  whose pseudo_labels.json holds their mIoU against the true labels (no pixel label of any split picks
                  the checkpoint: last, not best)
  stage2          the stage-2 config (SSNet-2: ASPP-L + FC) on stage1's pseudo labels, with the saliency term
The claims, each over the seeds (mean, min..max, and compare.py's verdict: decided only beyond the larger seed range):
  1. pseudo labels: stage 1 joint with saliency against stage 1 without it (mIoU on the training images)
  2. stage 2 against stage 1 (val mIoU)
  3. the segmentation val mIoU reached from image labels alone (stage 2)
A finished step is skipped (a run with summary.json; pseudo labels whose JSON is complete and newer than the
checkpoint); a killed run resumes from its last.pt. Writes RESULTS_DIR/ssnet_claim.{json,md} and the validation curves
ssnet_claim_curves.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (benchmarks/compare.py: runs, verdicts, tables)

from contextseg.config import load_config  # noqa: E402

STAGE1 = "configs/weak/ssnet_stage1_camvid_ecssd_half.yaml"
STAGE2 = "configs/weak/ssnet_stage2_camvid_ecssd_half.yaml"
SUITE = "ssnet"


def stage1_experiments(base) -> list[compare.Experiment]:
    no_saliency = {**base.data.kwargs, "saliency": None}
    return [
        compare.Experiment("stage1", [], "stage 1: image labels jointly with saliency (the config)"),
        compare.Experiment("stage1_no_sal", [f"data.kwargs={compare._flow(no_saliency)}",
                                             "loss.weights={cls: 1.0, saliency: 0.0}"],
                           "stage 1 from image labels alone (no saliency set, no saliency term)"),
    ]


def stage2_run(base2, stage1_run: compare.Run, base_seed: int, user: list[str], runs_root: Path) -> compare.Run:
    kwargs = {**base2.data.kwargs, "pseudo_labels": str(stage1_run.run_dir / "pseudo_labels")}
    exp = compare.Experiment("stage2", [*user, f"data.kwargs={compare._flow(kwargs)}"],
                             f"stage 2 (SSNet-2) on the pseudo labels of {stage1_run.key}")
    return compare.plan_runs(SUITE, [exp], [stage1_run.seed], base_seed, [], runs_root)[0]


def pseudo_labels_done(folder: Path, checkpoint: Path) -> dict | None:
    report = folder / "pseudo_labels.json"
    if not (report.is_file() and checkpoint.is_file()) or report.stat().st_mtime < checkpoint.stat().st_mtime:
        return None
    data = json.loads(report.read_text())
    return data if data.get("complete") and data.get("checkpoint") == str(checkpoint) else None


def write_labels(cfg, run_dir: Path, progress: bool) -> dict:
    from contextseg.tasks.weak.pseudo_labels import write_pseudo_labels

    checkpoint, folder = run_dir / "last.pt", run_dir / "pseudo_labels"
    done = pseudo_labels_done(folder, checkpoint)
    if done is not None:
        print(f"[{run_dir.name}] pseudo labels done before: {folder}")
        return done
    print(f"[{run_dir.name}] pseudo labels -> {folder}", flush=True)
    return write_pseudo_labels(cfg, checkpoint, folder, progress=progress)


def _rows_of(rows: list[dict], value_key: str) -> list[dict]:
    """Rows whose "value" is ``value_key`` of the run (for compare.aggregate)."""
    return [{**r, "value": r.get(value_key)} for r in rows if isinstance(r.get(value_key), (int, float))]


def claims(rows: list[dict]) -> dict:
    """The three claims' tables (compare.aggregate over the seeds)."""
    s1 = [r for r in rows if r["name"] in ("stage1", "stage1_no_sal")]
    val = [r for r in rows if r["name"] in ("stage1", "stage2")]
    return {
        "pseudo_labels": compare.aggregate(_rows_of(s1, "pseudo_mIoU"), ["stage1_no_sal", "stage1"],
                                           "stage1_no_sal", "mIoU"),
        "stage2_vs_stage1": compare.aggregate(_rows_of(val, "value"), ["stage1", "stage2"], "stage1", "mIoU"),
        "from_image_labels": compare.aggregate(_rows_of(rows, "value"), ["stage1_no_sal", "stage1", "stage2"],
                                               "stage1", "mIoU"),
    }


def markdown(report: dict) -> str:
    lines = [f"# SSNet claims: {report['stage1']} -> {report['stage2']}", "",
             f"Overrides: {' '.join(report['overrides']) or '(none)'}; seeds {report['seeds']}.", "",
             "## 1. Pseudo labels of the training images (mIoU against the true labels), joint vs without saliency",
             "", *compare.aggregate_markdown(report["claims"]["pseudo_labels"], "pseudo-label mIoU", "stage1_no_sal"),
             "", "## 2. Stage 2 against stage 1 (val mIoU)", "",
             *compare.aggregate_markdown(report["claims"]["stage2_vs_stage1"], "val mIoU", "stage1"),
             "", "## 3. Val mIoU from image labels alone, every run", "",
             *compare.aggregate_markdown(report["claims"]["from_image_labels"], "val mIoU", "stage1"),
             "", "## Runs", "",
             "| run | seed | status | val mIoU (last) | best | saliency max F | pseudo mIoU | on labelled | coverage "
             "| s/it | run dir |", "|" + "---|" * 11]
    for r in report["rows"]:
        cells = [r.get("run", "?"), str(r.get("seed")), r.get("status", "?"), compare._pct2(r.get("value")),
                 compare._pct2(r.get("best")), "-" if r.get("sal_max_f") is None else f"{r['sal_max_f']:.3f}",
                 compare._pct2(r.get("pseudo_mIoU")), compare._pct2(r.get("pseudo_mIoU_labelled")),
                 compare._pct2(r.get("pseudo_coverage")),
                 "-" if r.get("s_per_iter") is None else f"{r['s_per_iter']:.2f}", r.get("run_dir", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("overrides", nargs="*", help="key=value overrides for every training run (stage 1 and 2); each "
                   "arm's own settings (no saliency set, the pseudo-label folder) apply on top")
    p.add_argument("--stage1", default=STAGE1, help=f"stage-1 config (default {STAGE1})")
    p.add_argument("--stage2", default=STAGE2, help=f"stage-2 config (default {STAGE2})")
    p.add_argument("--seeds", type=compare._seed_list, metavar="S [S ...]", help="default: the stage-1 config's seed")
    p.add_argument("--runs-root", default="runs/claims", help="runs go to RUNS_ROOT/ssnet/NAME[@seedS]")
    p.add_argument("--results-dir", default="benchmarks/results/ssnet")
    p.add_argument("--list", action="store_true", help="print the steps and their commands, run nothing")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(compare._joined_seeds(sys.argv[1:] if argv is None else argv))
    base1, base2 = load_config(a.stage1, a.overrides), load_config(a.stage2, a.overrides)
    runs_root = Path(a.runs_root)
    seeds = list(dict.fromkeys(a.seeds or [base1.seed]))
    # the arms' own settings go on top of yours (base1 / base2 hold your overrides, e.g. another data.kwargs)
    firsts = compare.plan_runs(SUITE, [compare.Experiment(e.name, [*a.overrides, *e.overrides], e.note)
                                       for e in stage1_experiments(base1)], seeds, base1.seed, [], runs_root)
    plan = []  # (run, config file, stage-1 run whose pseudo labels it needs / writes)
    for run in firsts:
        plan.append((run, a.stage1, None))
    for run in firsts:
        if run.exp.name == "stage1":
            plan.append((stage2_run(base2, run, base1.seed, a.overrides, runs_root), a.stage2, run))
    if a.list:
        for run, config, source in plan:
            print(f"{run.key:22s} {run.exp.note}\n    contextseg train {config} "
                  + " ".join(map(compare._shell, run.overrides)))
            if source is None:
                print(f"    contextseg pseudo-labels {config} {' '.join(map(compare._shell, run.overrides))} "
                      f"--checkpoint {run.run_dir}/last.pt --out {run.run_dir}/pseudo_labels")
        return 0

    rows = []
    for run, config, source in plan:
        cfg = load_config(config, run.overrides)
        try:
            if source is not None and not next((r for r in rows if r["run"] == source.key
                                                and r.get("pseudo_mIoU") is not None), None):
                raise RuntimeError(f"the pseudo labels of {source.key} are missing (its run failed)")
            row = compare.run_experiment(run, cfg, runs_root, False, progress=not a.no_progress)
            if source is None:  # a stage 1: its pseudo labels
                labels = write_labels(cfg, run.run_dir, progress=not a.no_progress)
                row.update(pseudo_mIoU=labels.get("mIoU"), pseudo_mIoU_labelled=labels.get("mIoU_labelled"),
                           pseudo_coverage=labels.get("coverage"))
            summary = json.loads((run.run_dir / "summary.json").read_text())
            row["sal_max_f"] = (summary.get("final") or {}).get("sal_max_f")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one failure must not lose the others
            traceback.print_exc()
            row = {"name": run.exp.name, "run": run.key, "seed": run.seed, "status": "failed",
                   "error": f"{type(exc).__name__}: {exc}", "run_dir": str(run.run_dir)}
        rows.append(row)
        print(f"[{run.key}] {row['status']}: val mIoU {compare._pct2(row.get('value'))}"
              + (f", pseudo labels {compare._pct2(row.get('pseudo_mIoU'))}" if "pseudo_mIoU" in row else ""),
              flush=True)

    out = Path(a.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = out / "ssnet_claim_curves.png"
    plotted = compare.plot_curves(curves, SUITE, rows, "mIoU")
    report = {"stage1": a.stage1, "stage2": a.stage2, "overrides": a.overrides, "seeds": seeds,
              "claims": claims(rows), "curves": str(curves) if plotted else None, "rows": rows}
    (out / "ssnet_claim.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (out / "ssnet_claim.md").write_text(md)
    print()
    print(md)
    print(f"saved {out / 'ssnet_claim.json'} and .md" + (f", curves {curves}" if plotted else ""))
    return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
