"""The bad-input and fault catalogue (docs/reliability.md): for each case the exit status, one line that names the
problem and the fix, no traceback, and the files that must survive (inputs, labels, earlier runs) unchanged by hash.
"""
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catalogue import digests, one_clear_line, run_cli
from contextseg.cli import main
from contextseg.engine import trainer as trainer_module

ROOT = Path(__file__).resolve().parents[1]
CFG = str(ROOT / "configs" / "synthetic_fcn.yaml")
TINY = ["data.kwargs={num_samples: 16, size: [64, 64]}", "data.crop_size=[64,64]", "data.batch_size=4",
        "data.num_workers=0", "train.iters=4", "train.eval_interval=2", "train.log_interval=1", "train.amp=none"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", CFG, *TINY, f"output_dir={out}", "--no-progress"]) == 0
    return out


def test_train_refuses_a_folder_that_holds_a_run(trained_run, capsys):
    before = digests(trained_run)
    code, _, err = run_cli(capsys, "train", CFG, *TINY, f"output_dir={trained_run}", "--no-progress")
    assert code == 2
    one_clear_line(err, "holds a run", "--resume", "--overwrite")
    assert digests(trained_run) == before


def test_train_overwrite_replaces_the_run(trained_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    os.system(f"cp -r {trained_run} {copy}")
    (copy / "best.pt").write_bytes(b"old")
    assert main(["train", CFG, *TINY, f"output_dir={copy}", "--overwrite", "--no-progress"]) == 0
    assert torch.load(copy / "best.pt", weights_only=True)["step"] in (2, 4)


def test_train_into_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "not_a_dir"
    target.write_text("keep me")
    code, _, err = run_cli(capsys, "train", CFG, *TINY, f"output_dir={target}", "--no-progress")
    assert code == 2
    one_clear_line(err, "is a file")
    assert target.read_text() == "keep me"


def test_disk_full_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", CFG, *TINY, f"output_dir={out}", "--no-progress"]) == 0
    before = digests(out / "last.pt")

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed, unexpected pos 123")

    monkeypatch.setattr(torch, "save", full)
    code, _, err = run_cli(capsys, "train", CFG, *TINY, "train.iters=6", f"output_dir={out}", "--resume",
                        out / "last.pt", "--no-progress")
    assert code == 2
    one_clear_line(err, "no space left", "last.pt")
    assert digests(out / "last.pt") == before
    assert not list(out.glob(".*.tmp"))


def test_ctrl_c_saves_a_checkpoint_and_names_the_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    original = trainer_module.Trainer.train_step
    handler = signal.getsignal(signal.SIGINT)

    def step_then_interrupt(self, batches):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the handler asks to stop after this step
        return original(self, batches)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", step_then_interrupt)
    code, _, err = run_cli(capsys, "train", CFG, *TINY, f"output_dir={out}", "--no-progress")
    assert code == 130
    one_clear_line(err, "interrupted at step 2", "--resume")
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(trainer_module.Trainer, "train_step", original)
    assert main(["train", CFG, *TINY, f"output_dir={out}", "--resume", str(out / "last.pt"), "--no-progress"]) == 0
    assert signal.getsignal(signal.SIGINT) is handler  # the trainer put back the handler it found


def test_stale_temp_files_of_a_killed_save_are_cleaned(trained_run, tmp_path):
    out = tmp_path / "run"
    os.system(f"cp -r {trained_run} {out}")
    stale = out / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", CFG, *TINY, "train.iters=6", f"output_dir={out}", "--resume", str(out / "last.pt"),
                 "--no-progress"]) == 0
    assert not stale.exists()


class Malicious:
    """Unpickling this runs code (it creates ``marker``): weights_only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("content", ["pickle", "random", "empty"])
def test_bad_checkpoint_files_are_one_line_and_never_unpickled(tmp_path, capsys, content):
    path, marker = tmp_path / "model.pt", tmp_path / "pwned"  # a marker of this run only, not a shared /tmp file
    if content == "pickle":
        torch.save({"model": Malicious(marker)}, path)
    else:
        path.write_bytes(os.urandom(512) if content == "random" else b"")
    before = digests(path)
    code, _, err = run_cli(capsys, "predict", tmp_path, "--checkpoint", path, "--out", tmp_path / "out")
    assert code == 2 and not marker.exists()
    one_clear_line(err, str(path))
    assert "weights_only=False" not in err and ("never unpickles" in err if content == "pickle" else
                                                "not a readable checkpoint" in err)
    assert digests(path) == before


@pytest.mark.parametrize("override,words", [
    ("train.eval_interval=0", ["train.eval_interval", ">= 1"]),
    ("train.log_interval=0", ["train.log_interval"]),
    ("train.checkpoint_interval=0", ["train.checkpoint_interval"]),
    ("data.num_workers=-2", ["data.num_workers", "-1 for auto"]),
    ("data.crop_size=[0,0]", ["data.crop_size", "positive"]),
    ("data.eval_batch_size=0", ["data.eval_batch_size"]),
    ("train.lr=.nan", ["train.lr", "> 0"]),
    ("train.momentum=1.5", ["train.momentum", "below 1"]),
    ("data.mix_prob=2", ["data.mix_prob", "[0, 1]"]),
    ("train.grad_clip=abc", ["train.grad_clip", "number"]),
])
def test_config_values_out_of_range_are_one_line(tmp_path, capsys, override, words):
    code, _, err = run_cli(capsys, "train", CFG, *TINY, override, f"output_dir={tmp_path / 'run'}", "--no-progress")
    assert code == 2
    one_clear_line(err, *words)
    assert not (tmp_path / "run").exists()


def test_a_config_key_given_twice_is_refused(tmp_path, capsys):
    cfg = tmp_path / "twice.yaml"
    cfg.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    code, _, err = run_cli(capsys, "train", cfg, "--no-progress")
    assert code == 2
    one_clear_line(err, "'lr' is given twice", "line 3")


def test_bad_masks_are_all_reported_before_the_first_step(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONTEXTSEG_CACHE", str(tmp_path / "cache"))
    from contextseg.data.synthetic import write_synthetic_folder

    root = tmp_path / "data"
    write_synthetic_folder(root, 12, size=(48, 64), seed=3, split="train")
    masks = sorted((root / "train" / "masks").iterdir())
    for m in masks[3:5]:  # two masks with a value no class has
        a = np.asarray(Image.open(m)).copy()
        a[0, 0] = 77
        Image.fromarray(a).save(m)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks[7])  # and one of another size than its image
    before = digests(root)
    args = ["train", CFG, "data.dataset=folder", f"data.root={root}", "data.val_split=null", "data.crop_size=[48,64]",
            "data.batch_size=2", "data.num_workers=0", "train.iters=2", f"output_dir={tmp_path / 'run'}", "--no-progress"]
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    one_clear_line(err, "3 of 12 label files are bad", masks[3].name, masks[4].name, masks[7].name, "[77]")
    assert not (tmp_path / "run" / "last.pt").exists() and digests(root) == before


def test_label_checks_are_cached_by_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTEXTSEG_CACHE", str(tmp_path / "cache"))
    from contextseg.data import build_dataset
    from contextseg.data.checks import check_labels
    from contextseg.data.synthetic import write_synthetic_folder

    names = write_synthetic_folder(tmp_path / "d", 5, size=(32, 40), seed=1)
    ds = build_dataset("folder", None, root=str(tmp_path / "d"), classes=names)
    assert (check_labels(ds), check_labels(ds)) == (5, 0)  # the second pass reads nothing
    mask = sorted((tmp_path / "d" / "masks").iterdir())[2]
    Image.fromarray(np.full((32, 40), 9, np.uint8)).save(mask)  # a changed file is read again, and fails
    with pytest.raises(Exception, match="1 of 5 label files are bad"):
        check_labels(ds)


def test_overrides_after_the_flags_are_taken(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", CFG, "--no-progress", *TINY, f"output_dir={out}"]) == 0
    assert main(["train", CFG, f"output_dir={out}", "--no-progress", *TINY, "train.iters=6", "--resume",
                 str(out / "last.pt")]) == 0
    assert "done: step 6 (2 this session)" in capsys.readouterr().out


def test_eval_checks_its_report_path_before_evaluating(trained_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", CFG, *TINY, "--checkpoint", trained_run / "last.pt", "--out", tmp_path,
                        "--no-progress")
    assert code == 2
    one_clear_line(err, "is a folder", "eval.json")
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    code, _, err = run_cli(capsys, "eval", CFG, *TINY, "--checkpoint", trained_run / "last.pt", "--out",
                        blocker / "eval.json", "--no-progress")
    assert code == 2 and "cannot write" in err and blocker.read_text() == "keep"
