"""benchmarks/compare.py and benchmarks/multiscale_eval.py end to end on tiny synthetic runs (2 iterations)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from contextseg.engine.hardware import cpu_model
from contextseg.models.resize import align_corners_of

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "configs" / "synthetic_fcn.yaml")  # no head options: every suite swaps the head
TINY = ["device=cpu", "data.kwargs={num_samples: 8, size: [48, 64]}", "data.crop_size=[48, 64]",
        "data.batch_size=2", "data.num_workers=0", "train.iters=2", "train.eval_interval=2", "train.log_interval=1",
        "train.warmup_iters=0"]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


compare = _load("compare")
multiscale_eval = _load("multiscale_eval")


@pytest.mark.parametrize("value", [True, False])
def test_timing_wrapper_keeps_the_models_align_corners(value):
    # the evaluator resizes logits to the label with the model's setting; the timing wrapper must not hide it
    # (it did: every multi-scale row of an align_corners=True checkpoint was resized with False, ~0.2 mIoU off)
    model = nn.Conv2d(3, 2, 1)
    model.align_corners = value
    assert align_corners_of(multiscale_eval.Timed(model, torch.device("cpu"))) is value


def _run_compare(tmp_path, suite, only, *extra):
    argv = [suite, *TINY, "--base", BASE, "--only", only, "--runs-root", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "results"), "--no-progress", *extra]
    assert compare.main(argv) == 0
    report = json.loads((tmp_path / "results" / f"compare_{suite}.json").read_text())
    md = (tmp_path / "results" / f"compare_{suite}.md").read_text()
    return {r["name"]: r for r in report["rows"]}, md


def test_suites_define_the_issue_experiments():
    base = compare.load_config(BASE)
    names = {s: [e.name for e in compare.suite_experiments(s, base) if e.default] for s in compare.SUITES}
    assert names["heads"] == ["fcn", "psp", "aspp", "nonlocal", "ocr", "danet"]
    assert names["losses"] == ["ce", "ohem", "focal", "ce_mfb", "ce_cutmix", "ce_copy_paste"]
    assert names["merges"] == ["single", "attention", "hierarchical"]
    paste = next(e for e in compare.suite_experiments("losses", base) if e.name == "ce_copy_paste")
    assert "data.mix_kwargs={classes: [2, 6, 9, 10]}" in paste.overrides
    for e in compare.suite_experiments("merges", base):  # every override set loads
        compare.load_config(BASE, e.overrides)


def test_merges_use_each_reference_per_scale_weight():
    # per-scale supervision ("out_s*") as each merge's reference trains it: Attention to Scale 1 (every loss of equal
    # weight; also for its avg/max baselines), NVIDIA's supervised_mscale_loss_wt 0.05 for the hierarchical merge
    base = compare.load_config(BASE)
    expected = {"attention": 1.0, "hierarchical": 0.05, "avg": 1.0, "max": 1.0}
    experiments = {e.name: e for e in compare.suite_experiments("merges", base)}
    assert set(experiments) == {"single", *expected}
    assert experiments["single"].overrides == []
    for name, weight in expected.items():
        cfg = compare.load_config(BASE, experiments[name].overrides)
        assert cfg.model.kwargs["multiscale"] == {"scales": [0.5, 1.0], "merge": name}
        assert cfg.loss.weights == {"out": 1.0, "aux": 0.4, "out_s*": weight}
        assert f"per-scale supervision {weight}" in experiments[name].note
    assert "NVIDIA" in experiments["hierarchical"].note and "Attention to Scale" in experiments["attention"].note


def test_timing_from_log_subtracts_evals_and_joins_sessions(tmp_path):
    log = tmp_path / "metrics.jsonl"
    records = [{"kind": "train", "step": 10, "time": 10.0}, {"kind": "val", "step": 10, "eval_seconds": 3.0},
               {"kind": "train", "step": 20, "time": 23.0},  # 10 steps in 10 s + 3 s of evaluation
               {"kind": "val", "step": 20, "eval_seconds": 2.0},  # the run was killed here and resumed
               {"kind": "train", "step": 30, "time": 12.0}]  # new session: 10 steps in 12 s
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    t = compare.timing_from_log(log)
    assert t["s_per_iter"] == pytest.approx(32.0 / 30)
    assert t["train_wall_s"] == pytest.approx(32.0 + 5.0)
    assert t["eval_s_last"] == 2.0


def test_compare_and_multiscale_eval(tmp_path):
    # heads: two experiments trained, the table holds both with numbers
    rows, md = _run_compare(tmp_path, "heads", "fcn,psp")
    assert [r["status"] for r in rows.values()] == ["trained", "trained"]
    assert {r["precision"] for r in rows.values()} in ({"fp32"}, {"bf16"})  # what amp=auto chose on this CPU
    assert all(r["device"].startswith(cpu_model()) for r in rows.values())
    assert "Mixed" not in md and "| precision |" in md
    for name in ("fcn", "psp"):
        assert f"| {name} | **" in md
        assert 0 <= rows[name]["mIoU"] <= 1 and rows[name]["params"] > 0 and rows[name]["s_per_iter"] > 0
        assert set(rows[name]["per_class_iou"]) == {"sky", "ground", "disc", "box", "triangle", "stripes"}
    # run again: done runs are skipped; a run without summary.json is resumed from last.pt
    (tmp_path / "runs" / "heads" / "psp" / "summary.json").unlink()
    first_wall = rows["fcn"]["session_wall_s"]
    rows, _ = _run_compare(tmp_path, "heads", "fcn,psp")
    assert rows["psp"]["status"] == "resumed"
    # fcn was skipped as done: its row still says how it was made and how long that session took
    assert rows["fcn"]["status"] == "trained" and rows["fcn"]["session_wall_s"] == first_wall
    # another budget in the same folder is refused (recorded as failed), not silently mixed into the table
    argv = ["heads", *TINY, "train.iters=3", "--base", BASE, "--only", "fcn", "--runs-root", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "results"), "--no-progress"]
    assert compare.main(argv) == 1
    failed = json.loads((tmp_path / "results" / "compare_heads.json").read_text())["rows"][0]
    assert failed["status"] == "failed" and "train.iters" in failed["error"]

    # losses: copy-paste of chosen classes; merges: "single" is the same config as losses/ce -> reused
    rows, md = _run_compare(tmp_path, "losses", "ce,ce_copy_paste", "--copy-paste-classes", "2", "3")
    assert "| ce | **" in md and "| ce_copy_paste | **" in md
    rows, md = _run_compare(tmp_path, "merges", "single,hierarchical")
    assert rows["single"]["status"] == "reused" and rows["hierarchical"]["status"] == "trained"
    assert "| hierarchical | **" in md

    # multi-scale evaluation of the hierarchical checkpoint, with pictures
    ckpt = tmp_path / "runs" / "merges" / "hierarchical" / "best.pt"
    argv = [BASE, *TINY, "--checkpoint", str(ckpt), "--scales", "0.75", "1.0", "--results-dir",
            str(tmp_path / "results"), "--pictures", str(tmp_path / "pics"), "--no-progress"]
    assert multiscale_eval.main(argv) == 0
    report = json.loads((tmp_path / "results" / "multiscale_hierarchical.json").read_text())
    keys = [r["key"] for r in report["rows"]]
    expected = ["single [1]", "avg [0.75/1]", "max [0.75/1]", "avg [0.5/1]", "max [0.5/1]",
                "hierarchical [0.5/1]", "hierarchical [0.75/1]"]
    assert keys == [k + f for k in expected for f in ("", " + flip")]
    assert all(0 <= r["mIoU"] <= 1 and r["s_per_img"] > 0 and r["images"] == 8 for r in report["rows"])
    md = (tmp_path / "results" / "multiscale_hierarchical.md").read_text()
    assert md.count("| hierarchical |") == 4 and md.count("| single |") == 2
    pics = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert len(pics) == len(expected) and "hierarchical_hierarchical_0.5-1.png" in pics


def test_only_runs_add_rows_to_the_table(tmp_path):
    from types import SimpleNamespace

    path = tmp_path / "compare_heads.json"
    a = SimpleNamespace(suite="heads", base="b.yaml", overrides=["train.iters=500"])
    path.write_text(json.dumps({"suite": "heads", "base": "b.yaml", "overrides": ["train.iters=500"],
                                "rows": [{"name": "fcn", "mIoU": 0.3}, {"name": "ocr", "mIoU": 0.4}]}))
    order = ["fcn", "psp", "ocr", "danet"]
    rows = compare._with_earlier_rows(path, a, [{"name": "danet", "mIoU": 0.5}, {"name": "fcn", "mIoU": 0.35}], order)
    assert [(r["name"], r["mIoU"]) for r in rows] == [("fcn", 0.35), ("ocr", 0.4), ("danet", 0.5)]
    other = SimpleNamespace(suite="heads", base="b.yaml", overrides=["train.iters=1000"])  # another budget: not mixed
    assert compare._with_earlier_rows(path, other, [{"name": "danet"}], order) == [{"name": "danet"}]


def test_rows_of_other_precisions_or_devices_are_flagged():
    zen5, zen3 = "AMD EPYC (avx2, avx512, avx512_bf16)", "AMD EPYC (avx2)"
    alike = [{"name": "gap", "precision": "bf16", "device": zen5}, {"name": "saol", "precision": "bf16", "device": zen5}]
    assert compare.conditions_warning(alike) == []
    mixed = alike + [{"name": "saol_no_ss", "precision": "fp32", "device": zen3}]
    lines = compare.conditions_warning(mixed)
    assert lines[0].startswith("**Mixed precisions**: bf16; fp32") and "**Mixed devices**" in lines[1]
    older = alike + [{"name": "old", "run": "old@seed1"}]  # a row from before the fields were recorded
    assert compare.conditions_warning(older) == [
        "Rows old@seed1 do not record their precision (trained before it was recorded).",
        "Rows old@seed1 do not record their device (trained before it was recorded).", ""]


# ----------------------------------------------------------------------------- seeds, aggregates, verdicts, curves


def test_seed_runs_get_their_own_dirs_and_seed_override(tmp_path, monkeypatch, capsys):
    base = compare.load_config(BASE)
    exps = [e for e in compare.suite_experiments("heads", base) if e.name in ("fcn", "ocr")]
    runs = compare.plan_runs("heads", exps, [0, 2], 0, ["train.iters=5"], tmp_path)
    assert [r.key for r in runs] == ["fcn", "fcn@seed2", "ocr", "ocr@seed2"]
    assert [r.run_dir for r in runs] == [tmp_path / "heads" / k for k in ("fcn", "fcn@seed2", "ocr", "ocr@seed2")]
    assert runs[0].overrides == ["model.arch=fcn", "train.iters=5", f"output_dir={tmp_path / 'heads' / 'fcn'}",
                                 "name=compare_heads_fcn"]  # the base seed: today's run, reused as it is
    assert "seed=2" in runs[1].overrides and "seed=2" not in runs[2].overrides
    assert compare.load_config(BASE, runs[1].overrides).seed == 2
    # --list with the default base of the suite; overrides after the seeds stay overrides
    monkeypatch.chdir(ROOT)
    assert compare.main(["saol", "--list", "--seeds", "0", "1", "train.iters=10"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: next_ln for ln, next_ln in zip(out.splitlines(), out.splitlines()[1:])
             if not ln.startswith(" ")}
    assert list(lines) == [f"{n}{s}" for n in ("gap", "saol", "saol_no_ss", "saol_no_sd", "saol_ce")
                           for s in ("", "@seed1")]
    assert "configs/cifar10/saol_resnet20.yaml" in lines["gap"] and "train.iters=10" in lines["gap@seed1"]
    assert " seed=1 " in lines["gap@seed1"] and "output_dir=runs/compare/saol/gap@seed1" in lines["gap@seed1"]
    assert "seed=" not in lines["gap"]


def test_verdict_decides_only_beyond_the_seed_spread():
    assert compare.verdict([0.50, 0.52], [0.40, 0.41]) == "better by 10.50 (holds)"
    assert compare.verdict([0.40, 0.41], [0.50, 0.52]) == "worse by 10.50 (does not hold)"
    assert compare.verdict([0.50, 0.54], [0.49, 0.50]) == "undecided (|d| 2.50 within the seed spread 4.00)"
    assert compare.verdict([0.49, 0.50], [0.50, 0.54]) == "undecided (|d| 2.50 within the seed spread 4.00)"
    assert compare.verdict([0.90], [0.40, 0.41]) == "undecided (one seed)"
    assert compare.verdict([0.90, 0.91], [0.40]) == "undecided (one seed)"
    helps = "worse by 10.50 (the removed part helps: holds)"
    assert compare.verdict([0.40, 0.41], [0.50, 0.52], ablation=True) == helps
    hurts = "better by 10.50 (the removed part hurts: does not hold)"
    assert compare.verdict([0.50, 0.52], [0.40, 0.41], ablation=True) == hurts
    assert compare.verdict([0.50, 0.54], [0.49, 0.50], ablation=True).startswith("undecided")


def test_curve_flat_rule(tmp_path):
    flat = [[100, .30], [200, .50], [300, .60], [400, .605], [500, .61], [600, .612]]  # last 0.612, 400..500 0.6075
    assert compare.curve_change(flat) == pytest.approx(0.612 - 0.6075)
    assert compare.curve_state(compare.curve_change(flat)) == "flat"
    assert compare.curve_state(compare.curve_change([[100, .3], [200, .4], [300, .5]])) == "still rising"
    assert compare.curve_change([[1000, .5], [2000, .7]]) == pytest.approx(0.2)  # none in the window: the previous
    assert compare.curve_state(compare.curve_change([[100, .5], [200, .6], [300, .45]])) == "falling"
    assert compare.curve_state(compare.curve_change([[100, .5]])) == "one evaluation"
    assert compare.curve_state(0.01) == "flat" and compare.curve_state(0.0101) == "still rising"
    log = tmp_path / "metrics.jsonl"
    records = [{"kind": "train", "step": 2, "loss": 1.0}, {"kind": "val", "step": 2, "top1": 0.1},
               {"kind": "val", "step": 2, "top1": 0.2},  # evaluated again after a resume: the later one counts
               {"kind": "val", "step": 4, "top1": 0.3}, {"kind": "val", "step": 6, "mIoU": 0.9}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert compare.curve_from_log(log, "top1") == [[2, 0.2], [4, 0.3]]


def test_aggregate_over_seeds_with_verdicts():
    rows = [
        {"name": "fcn", "seed": 0, "status": "trained", "value": 0.40, "s_per_iter": 1.0, "curve_change": 0.001},
        {"name": "fcn", "seed": 1, "status": "trained", "value": 0.42, "s_per_iter": 3.0, "curve_change": -0.002},
        {"name": "ocr", "seed": 0, "status": "trained", "value": 0.50, "curve_change": 0.05},
        {"name": "ocr", "seed": 1, "status": "reused", "value": 0.52, "curve_change": 0.0},
        {"name": "psp", "status": "skipped (done)", "mIoU": 0.45},  # a row written before seeds
        {"name": "psp", "seed": 1, "status": "failed"},
    ]
    agg = {g["name"]: g for g in compare.aggregate(rows, ["fcn", "psp", "ocr"], "fcn", "mIoU")}
    assert list(agg) == ["fcn", "psp", "ocr"]
    fcn, psp, ocr = agg["fcn"], agg["psp"], agg["ocr"]
    assert (fcn["n"], fcn["seeds"], fcn["min"], fcn["max"]) == (2, [0, 1], 0.40, 0.42)
    assert fcn["mean"] == pytest.approx(0.41) and fcn["std"] == pytest.approx(0.02 ** 0.5 / 10)
    assert fcn["s_per_iter"] == 2.0 and fcn["curve"] == "flat" and fcn["verdict"] == "baseline"
    assert (psp["n"], psp["mean"], psp["std"], psp["verdict"], psp["curve"]) == (1, 0.45, None,
                                                                                   "undecided (one seed)", "-")
    assert ocr["verdict"] == "better by 10.00 (holds)" and ocr["curve"] == "seed 0 still rising (+5.0)"
    assert compare.aggregate(rows[2:4], ["fcn", "ocr"], "fcn", "mIoU")[0]["verdict"] == "- (no fcn run)"
    md = "\n".join(compare.aggregate_markdown(list(agg.values()), "mIoU", "fcn"))
    assert ("| ocr | 2 | 0, 1 | **51.00** | 50.00..52.00 | 1.41 | - | seed 0 still rising (+5.0) | +10.00 [+3.92, "
            "+16.08], p 0.019 | better by") in md
    assert fcn["difference"] is None and psp["difference"] is None


def test_difference_ci_is_welch():
    """d = 10 points, each arm's variance 2e-4 over 2 seeds: se 0.01414, Welch df 2, t(0.975, 2) = 4.303."""
    diff = compare.difference_ci([0.50, 0.52], [0.40, 0.42])
    assert diff["d"] == pytest.approx(0.10) and diff["df"] == pytest.approx(2.0)
    assert (diff["lo"], diff["hi"]) == (pytest.approx(0.10 - 4.3027 * 0.014142, abs=1e-4),
                                        pytest.approx(0.10 + 4.3027 * 0.014142, abs=1e-4))
    assert diff["p"] == pytest.approx(0.0194, abs=5e-4)
    unequal = compare.difference_ci([0.50, 0.52, 0.60], [0.40, 0.41])  # unequal n and variances: Welch's df
    va, vb = 0.0028 / 3, 0.00005 / 2
    assert unequal["df"] == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 1))
    assert compare.difference_ci([0.5], [0.4, 0.41]) is None


def test_saol_and_pfa_suites_load_as_configs():
    from contextseg.losses.saol import build_classification_loss

    for suite in compare.SUITES:
        assert (ROOT / compare.DEFAULT_BASE[suite]).is_file()
        base = compare.load_config(ROOT / compare.DEFAULT_BASE[suite]) if suite in ("saol", "pfa") else \
            compare.load_config(BASE)
        assert compare.BASELINE[suite] in [e.name for e in compare.suite_experiments(suite, base)]
    saol_path = ROOT / compare.DEFAULT_BASE["saol"]
    terms = {"gap": {"out"}, "saol": {"out", "attention", "spatial_logits", "gap"}, "saol_no_ss": {"out", "gap"},
             "saol_no_sd": {"out", "attention", "spatial_logits"}, "saol_ce": {"out"}}
    exps = compare.suite_experiments("saol", compare.load_config(saol_path))
    assert [e.name for e in exps] == list(terms)
    for e in exps:
        cfg = compare.load_config(saol_path, e.overrides)
        loss = build_classification_loss(cfg.loss.name, cfg.loss.weights, **cfg.loss.kwargs)
        assert set(loss.weights) == terms[e.name] and cfg.model.arch == ("gap" if e.name == "gap" else "saol")
        assert loss.needs_source_logits == ("spatial_logits" in terms[e.name])
    gap = compare.load_config(saol_path, exps[0].overrides)  # the GAP-FC baseline is configs/cifar10/gap_resnet20
    assert compare.config_diff(gap.to_dict(), compare.load_config(ROOT / "configs/cifar10/gap_resnet20.yaml")
                               .to_dict()) == ["name", "output_dir"]
    pfa_path = ROOT / compare.DEFAULT_BASE["pfa"]
    switches = {"full": {}, "no_ca": {"channel_attention": False}, "no_sa": {"spatial_attention": False},
                "no_attention": {"channel_attention": False, "spatial_attention": False}}
    exps = compare.suite_experiments("pfa", compare.load_config(pfa_path))
    assert [e.name for e in exps] == list(switches)
    params = {}
    for e in exps:
        cfg = compare.load_config(pfa_path, e.overrides)
        assert cfg.model.kwargs == switches[e.name] and cfg.model.arch == "pfa"
        params[e.name] = compare.count_params(cfg, 1)  # the head takes the switches
    assert params["full"] > params["no_sa"] > params["no_ca"] > params["no_attention"] > 0


def test_compare_over_two_seeds_end_to_end(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = ["heads", "--seeds", "0", "1", *TINY, "train.iters=4", "--base", BASE, "--only", "fcn,psp",
            "--runs-root", str(runs), "--results-dir", str(results), "--no-progress"]  # evaluations at 2 and 4
    assert compare.main(argv) == 0
    assert all((runs / "heads" / k / "summary.json").is_file() for k in ("fcn", "fcn@seed1", "psp", "psp@seed1"))
    assert compare.load_config(runs / "heads" / "psp@seed1" / "config.yaml").seed == 1
    report = json.loads((results / "compare_heads.json").read_text())
    assert [(r["run"], r["seed"], r["status"]) for r in report["rows"]] == [
        ("fcn", 0, "trained"), ("fcn@seed1", 1, "trained"), ("psp", 0, "trained"), ("psp@seed1", 1, "trained")]
    assert all(r["key_metric"] == "mIoU" and r["value"] == r["mIoU"] and [s for s, _ in r["curve"]] == [2, 4]
               for r in report["rows"])
    agg = {g["name"]: g for g in report["aggregates"]}
    assert agg["fcn"]["verdict"] == "baseline" and agg["fcn"]["n"] == 2 and agg["psp"]["seeds"] == [0, 1]
    assert agg["psp"]["verdict"].startswith(("better by", "worse by", "undecided (|d|"))  # two seeds: decided by d
    md = (results / "compare_heads.md").read_text()
    assert md.index("| fcn | 2 | 0, 1 | **") < md.index("| fcn | **") < md.index("| fcn@seed1 | **")
    assert (results / "compare_heads_curves.png").stat().st_size > 0
    # the same config under another suite (losses/ce = heads/fcn on this base): both seeds reused, @seed dirs too
    argv = ["losses", *TINY, "train.iters=4", "--seeds", "0", "1", "--base", BASE, "--only", "ce",
            "--runs-root", str(runs), "--results-dir", str(results), "--no-progress"]
    assert compare.main(argv) == 0
    rows = json.loads((results / "compare_losses.json").read_text())["rows"]
    assert [(r["run"], r["status"], Path(r["reused_from"]).name) for r in rows] == [
        ("ce", "reused", "fcn"), ("ce@seed1", "reused", "fcn@seed1")]


def test_rows_of_another_machine_are_reused_and_baseline_chosen(tmp_path):
    import shutil

    results = tmp_path / "results"
    argv = ["heads", *TINY, "--base", BASE, "--only", "fcn,psp", "--runs-root", str(tmp_path / "runs"),
            "--results-dir", str(results), "--no-progress"]
    assert compare.main(argv) == 0
    shutil.rmtree(tmp_path / "runs")  # the runs stayed on the machine that trained them; their table came with us
    argv = ["losses", *TINY, "--base", BASE, "--only", "ce,focal", "--runs-root", str(tmp_path / "runs2"),
            "--results-dir", str(results), "--no-progress", "--baseline", "focal"]
    assert compare.main(argv) == 0
    report = json.loads((results / "compare_losses.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    heads = {r["name"]: r for r in json.loads((results / "compare_heads.json").read_text())["rows"]}
    assert rows["ce"]["status"] == "reused" and rows["ce"]["reused_from"].endswith("compare_heads.json: fcn")
    assert rows["ce"]["value"] == heads["fcn"]["value"] and rows["ce"]["overrides"] == ["loss.name=ce"]
    assert rows["focal"]["status"] == "trained"  # another loss: another config, trained
    assert report["baseline"] == "focal"
    assert {g["name"]: g["verdict"] for g in report["aggregates"]}["focal"] == "baseline"
    with pytest.raises(SystemExit):
        compare.main(["losses", "--base", BASE, "--baseline", "nope", "--list"])


def test_cpu_claims_runs_side_by_side_into_one_table(tmp_path):
    import os
    import shutil
    import subprocess

    if shutil.which("flock") is None:
        pytest.skip("flock (util-linux) is not installed")
    env = {**os.environ, "SUITE": "heads", "ARMS": "fcn psp", "SEEDS": "0", "BASE": BASE, "PY": sys.executable,
           "RUNS_ROOT": str(tmp_path / "runs"), "RESULTS": str(tmp_path / "results"),
           "AFTER_EACH": f'echo "$ARM $SEED" >> {tmp_path / "after.txt"}'}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "cpu_claims.sh"), *TINY], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "results" / "compare_heads.json").read_text())
    assert sorted((r["run"], r["status"]) for r in report["rows"]) == [("fcn", "trained"), ("psp", "trained")]
    assert sorted((tmp_path / "after.txt").read_text().split("\n")[:2]) == ["fcn 0", "psp 0"]
    assert done.stdout.count("trained: val mIoU") == 2


def test_stn_suite_is_the_shipped_configs():
    base = compare.load_config("configs/cifar10/gap_resnet20_distorted.yaml")
    runs = {e.name: e for e in compare.suite_experiments("stn", base)}
    stn = compare.load_config("configs/cifar10/gap_resnet20_distorted.yaml", runs["stn"].overrides)
    shipped = compare.load_config("configs/cifar10/stn_resnet20.yaml")
    ignore = {"name", "output_dir"}
    assert not compare.config_diff(stn.to_dict(), shipped.to_dict(), ignore)
    assert compare.BASELINE["stn"] == "gap" and runs["gap"].overrides == []
    heads = {e.name: e for e in compare.suite_experiments("heads", compare.load_config(compare.CAMVID_BASE))}
    assert heads["segtr"].overrides == ["model.arch=segtr"] and not heads["segtr"].default


def test_ssnet_claim_end_to_end(tmp_path):
    """benchmarks/ssnet_claim.py on generated data, two seeds: both stage-1 arms (the ablation without a saliency
    set), their pseudo labels from last.pt, stage 2 on each seed's own labels, the three claims' tables; a second
    call skips every finished step."""
    from contextseg.data import write_synthetic_weak

    ssnet_claim = _load("ssnet_claim")
    roots = write_synthetic_weak(tmp_path / "data", n_train=4, n_val=1, n_saliency=4, size=(32, 48))
    stage1 = ROOT / "configs" / "weak" / "ssnet_synthetic.yaml"
    stage2 = tmp_path / "stage2.yaml"
    stage2.write_text(stage1.read_text().replace("kwargs: {sam_grid: 2}", "kwargs: {sam_grid: 2, seg_head: aspp_l, "
                                                 "cls_head: fc}")
                      .replace("weights: {cls: 1.0, saliency: 1.0}", "weights: {cls: 1.0, saliency: 1.0, seg: 1.0}"))
    data = (f"data.kwargs={{segmentation: {{dataset: folder, root: {roots['segmentation']}}}, "
            f"saliency: {{dataset: saliency_folder, root: {roots['saliency']}, val_every: 4}}}}")
    argv = ["--stage1", str(stage1), "--stage2", str(stage2), "--seeds", "0", "1", data, "data.crop_size=[32,48]",
            "data.batch_size=2", "train.iters=2", "train.eval_interval=2", "--runs-root", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "results"), "--no-progress"]
    assert ssnet_claim.main(argv) == 0
    report = json.loads((tmp_path / "results" / "ssnet_claim.json").read_text())
    rows = {r["run"]: r for r in report["rows"]}
    assert set(rows) == {"stage1", "stage1@seed1", "stage1_no_sal", "stage1_no_sal@seed1", "stage2", "stage2@seed1"}
    runs = tmp_path / "runs" / "ssnet"
    for key in ("stage1", "stage1_no_sal@seed1"):
        labels = json.loads((runs / key / "pseudo_labels" / "pseudo_labels.json").read_text())
        assert labels["complete"] and labels["checkpoint"] == str(runs / key / "last.pt")
        assert rows[key]["pseudo_mIoU"] == pytest.approx(labels["mIoU"])
    no_sal = compare.load_config(runs / "stage1_no_sal" / "config.yaml")
    assert no_sal.data.kwargs["saliency"] is None and no_sal.loss.weights == {"cls": 1.0, "saliency": 0.0}
    assert rows["stage1_no_sal"]["sal_max_f"] is None and rows["stage1"]["sal_max_f"] is not None
    stage2_cfg = compare.load_config(runs / "stage2@seed1" / "config.yaml")
    assert stage2_cfg.data.kwargs["pseudo_labels"] == str(runs / "stage1@seed1" / "pseudo_labels")
    assert stage2_cfg.seed == 1 and stage2_cfg.model.kwargs["seg_head"] == "aspp_l"
    claims = report["claims"]
    assert [g["name"] for g in claims["pseudo_labels"]] == ["stage1_no_sal", "stage1"]
    assert [g["name"] for g in claims["stage2_vs_stage1"]] == ["stage1", "stage2"]
    assert all(g["n"] == 2 for g in claims["from_image_labels"])
    mean = (rows["stage2"]["value"] + rows["stage2@seed1"]["value"]) / 2
    assert claims["stage2_vs_stage1"][1]["mean"] == pytest.approx(mean)
    md = (tmp_path / "results" / "ssnet_claim.md").read_text()
    assert "## 1. Pseudo labels" in md and "verdict vs stage1_no_sal" in md
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    assert ssnet_claim.main(argv) == 0  # everything done: nothing trained or written again
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()} == before
