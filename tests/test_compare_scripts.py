"""benchmarks/compare.py and benchmarks/multiscale_eval.py end to end on tiny synthetic runs (2 iterations)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

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
    for name in ("fcn", "psp"):
        assert f"| {name} | **" in md
        assert 0 <= rows[name]["mIoU"] <= 1 and rows[name]["params"] > 0 and rows[name]["s_per_iter"] > 0
        assert set(rows[name]["per_class_iou"]) == {"sky", "ground", "disc", "box", "triangle", "stripes"}
    # run again: done runs are skipped; a run without summary.json is resumed from last.pt
    (tmp_path / "runs" / "heads" / "psp" / "summary.json").unlink()
    rows, _ = _run_compare(tmp_path, "heads", "fcn,psp")
    assert rows["fcn"]["status"] == "skipped (done)" and rows["psp"]["status"] == "resumed"
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
