"""Mutation testing of the core modules with mutmut: how many planted bugs the tests catch, per module.

    .venv/bin/pip install mutmut==3.8.1                      # once (not a dependency of the package)
    .venv/bin/python benchmarks/mutation.py metrics sod       # groups to run (default: all), resumable
    .venv/bin/python benchmarks/mutation.py --list            # the groups, their files and tests
    .venv/bin/python benchmarks/mutation.py metrics --max-children 2 --work /tmp/contextseg-mutation

Each group mutates its source files and runs its test files (the tests that exercise those modules, not the whole
suite): a scratch copy of the repository per group (WORK/GROUP: contextseg/, tests/, pyproject.toml and a setup.cfg
with the group's [mutmut] section) so the checkout is never touched; mutmut forks one test process per mutant and
runs only the tests that cover the mutated function. Run again, it goes on where it stopped (mutmut keeps its
results in WORK/GROUP/mutants/).

A mutant is "killed" when a test fails (or errors, or times out: a mutant that makes a loop endless is caught),
"survived" when every test passes, "no tests" when no selected test reaches the mutated function. Score = killed /
(killed + survived + no tests). Equivalent mutants (a change that cannot alter behaviour, e.g. a default argument
nobody passes) count as survivors here: the report lists every survivor so they can be read and judged.

Written to RESULTS_DIR (default benchmarks/results): mutation.json (per group and file: counts, score, survivors
with their diffs) and mutation.md (the table and the survivors), merged with the groups already there.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILLED = {1, 3, 36, 24, -24, 152, 255, 37}  # test failure, pytest internal error, timeouts, type check
SURVIVED = {0}
NO_TESTS = {5, 33}

COPIED = ("contextseg", "tests", "configs", "zoo")  # the package, and what its tests read (configs, zoo models)
GROUPS = {  # name: (files to mutate, test files that exercise them)
    "heads": (["contextseg/models/heads/" + f for f in ("ocr.py", "psp.py", "aspp.py", "aspp_l.py", "fcn.py",
                                                        "danet.py", "nonlocal_head.py", "largefov.py", "aux.py")],
              ["tests/test_context_heads.py", "tests/test_known_values.py", "tests/test_models.py",
               "tests/test_head_settings.py"] + [f"tests/test_gt_ocr.py::test_{t}" for t in (  # not its CLI eval
                   "label_onehot_downsamples_and_keeps_ignored_pixels_apart",
                   "ground_truth_regions_are_class_means_of_the_pixels",
                   "full_oracle_gives_each_pixel_its_own_regions_value",
                   "oracle_changes_only_the_forward_inside_the_block")]),
    "losses": (["contextseg/losses/pixel.py", "contextseg/losses/outputs.py"],
               ["tests/test_metrics_losses.py", "tests/test_losses_mix.py", "tests/test_known_values.py"]),
    "metrics": (["contextseg/metrics/segmentation.py", "contextseg/metrics/classification.py"],
                ["tests/test_metrics_losses.py", "tests/test_known_values.py"]),
    "mixes": (["contextseg/data/mix.py"], ["tests/test_losses_mix.py", "tests/test_known_values.py"]),
    "multiscale": (["contextseg/models/multiscale.py"], ["tests/test_multiscale.py", "tests/test_multiscale_values.py",
                                                         "tests/test_known_values.py"]),
    "checkpoint": (["contextseg/engine/checkpoint.py"], ["tests/test_checkpoint.py", "tests/test_engine.py",
                                                         "tests/test_failure_catalogue.py"]),
    "sod": (["contextseg/metrics/sod.py"], ["tests/test_sod_metrics.py", "tests/test_known_values.py"]),
    "saol_loss": (["contextseg/losses/saol.py"], ["tests/test_saol.py", "tests/test_known_values.py"]),
}


def setup_cfg(files: list[str], tests: list[str]) -> str:
    """mutmut's section; its list values are one item per (indented) line."""
    def items(values):
        return "".join(f"\n    {v}" for v in values)

    return ("[mutmut]\nsource_paths=" + items(["contextseg"]) + "\nonly_mutate=" + items(files)
            + "\npytest_add_cli_args_test_selection=" + items(tests)
            + "\npytest_add_cli_args=" + items(["-q", "-p", "no:cacheprovider", "-m", "not real_data and not slow"])
            + "\nalso_copy=" + items(COPIED[1:]) + "\nuse_git_change_detection=False\n")


def prepare(work: Path, files: list[str], tests: list[str]) -> None:
    """WORK holds a copy of the package and tests; an existing copy is kept (mutmut resumes from it) unless a file
    under test changed since, in which case it is refreshed and mutmut re-tests what changed."""
    work.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copytree(ROOT / name, work / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    (work / "setup.cfg").write_text(setup_cfg(files, tests))


def collect(work: Path, files: list[str], mutmut: str) -> dict:
    """Counts per file from mutmut's meta files, and every survivor with its diff (``mutmut show``)."""
    out = {}
    for f in files:
        meta = work / "mutants" / (f + ".meta")
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {}) if meta.is_file() else {}
        killed = sorted(k for k, c in codes.items() if c in KILLED)
        survived = sorted(k for k, c in codes.items() if c in SURVIVED)
        no_tests = sorted(k for k, c in codes.items() if c in NO_TESTS)
        other = sorted(k for k, c in codes.items() if c not in KILLED | SURVIVED | NO_TESTS)
        judged = len(killed) + len(survived) + len(no_tests)
        diffs = {}
        for name in survived + no_tests:
            shown = subprocess.run([mutmut, "show", name], cwd=work, capture_output=True, text=True)
            diffs[name] = "\n".join(ln for ln in shown.stdout.splitlines() if ln.startswith(("+", "-"))
                                    and not ln.startswith(("+++", "---")))
        out[f] = {"mutants": len(codes), "killed": len(killed), "survived": len(survived), "no_tests": len(no_tests),
                  "not_run": len(other), "score": len(killed) / judged if judged else None, "survivors": diffs}
    return out


def markdown(results: dict) -> str:
    lines = ["# Mutation testing (mutmut 3.8.1)", "",
             "`.venv/bin/python benchmarks/mutation.py GROUP ...`: each group's files mutated, its test files run "
             "(benchmarks/mutation.py GROUPS). Score = killed / (killed + survived + no tests); survivors include "
             "equivalent mutants (listed below, to read).", "",
             "| group | file | mutants | killed | survived | no tests | not run | score | CPU | minutes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for group, g in results.items():
        for f, r in g["files"].items():
            score = "" if r["score"] is None else f"{100 * r['score']:.1f}%"
            lines.append(f"| {group} | {f} | {r['mutants']} | {r['killed']} | {r['survived']} | {r['no_tests']} | "
                         f"{r['not_run']} | {score} | {g['cpu']} | {g['minutes']:.0f} |")
    lines += ["", "## Survivors", ""]
    for group, g in results.items():
        for f, r in g["files"].items():
            for name, diff in r["survivors"].items():
                lines += [f"- `{name}`", "", "```diff", diff, "```", ""]
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("groups", nargs="*", help=f"default: all of {', '.join(GROUPS)}")
    ap.add_argument("--work", default="/tmp/contextseg-mutation", help="scratch folder, one copy per group")
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    groups = args.groups or list(GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        print(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    if args.list:
        for g in groups:
            print(f"{g}: mutates {', '.join(GROUPS[g][0])}\n    tests {', '.join(GROUPS[g][1])}")
        return 0
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if mutmut is None:
        print("mutmut is not installed: .venv/bin/pip install mutmut==3.8.1", file=sys.stderr)
        return 2
    out_json = Path(args.results_dir) / "mutation.json"
    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    for g in groups:
        files, tests = GROUPS[g]
        work = Path(args.work) / g
        prepare(work, files, tests)
        print(f"[{g}] mutmut run in {work} ({len(files)} files, tests {' '.join(tests)})", flush=True)
        start = time.perf_counter()
        # one thread per test process: mutmut forks its children from a process that has run torch, and a child
        # forked after torch started its intra-op thread pool waits forever on the pool's lock (every mutant a
        # timeout); parallelism comes from --max-children instead
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.run([mutmut, "run", "--max-children", str(args.max_children)], cwd=work, env=env)
        minutes = (time.perf_counter() - start) / 60
        if proc.returncode:
            print(f"[{g}] mutmut exited with {proc.returncode}; the counts below are what it finished", flush=True)
        results[g] = {"files": collect(work, files, mutmut), "cpu": cpu_name(), "minutes": minutes,
                      "max_children": args.max_children}
        for f, r in results[g]["files"].items():
            score = "n/a" if r["score"] is None else f"{100 * r['score']:.1f}%"
            print(f"  {f}: {r['killed']} killed, {r['survived']} survived, {r['no_tests']} no tests, "
                  f"{r['not_run']} not run of {r['mutants']}: {score}")
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=1))
        (out_json.parent / "mutation.md").write_text(markdown(results))
    print(f"saved {out_json} and mutation.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
