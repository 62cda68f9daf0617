"""Checkpoint files (engine/checkpoint.py): atomic writes and their one-line errors, stale temp files, the RNG state
round trip, and the messages for checkpoints that do not load. Small tensors and a tiny model; no training."""
import errno
import random

import numpy as np
import pytest
import torch

from catalogue import error_message
from contextseg.engine import checkpoint as ck



FIX = "free space, fix the folder's permissions or choose another output folder"


def test_atomic_save_writes_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "two" / "deeper" / "last.pt"  # the folders are made
    ck.atomic_save({"a": torch.arange(3)}, path)
    ck.atomic_save({"a": torch.arange(4)}, path)
    assert torch.load(path, weights_only=True)["a"].tolist() == [0, 1, 2, 3]
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_atomic_save_writes_a_hidden_temp_beside_the_target(tmp_path, monkeypatch):
    renames, real_replace = [], ck.os.replace
    monkeypatch.setattr(ck.os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b)))
    ck.atomic_save({"a": torch.ones(1)}, tmp_path / "best.pt")
    (tmp, target), = renames
    tmp = ck.Path(tmp)
    assert ck.Path(target) == tmp_path / "best.pt" and tmp.parent == tmp_path  # same folder: rename is atomic
    assert tmp.name.startswith(".best.pt.") and tmp.name.endswith(".tmp")  # what remove_stale_temps removes


def test_atomic_save_failures_keep_the_old_file_and_name_the_path(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ck.atomic_save({"a": torch.ones(2)}, path)

    def full_disk(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ck.torch, "save", full_disk)
    assert error_message(lambda: ck.atomic_save({}, path)) == (
        f"cannot write {str(path)!r}: no space left on the device (the previous one is intact); {FIX}")
    monkeypatch.setattr(ck.torch, "save", lambda obj, f: (_ for _ in ()).throw(RuntimeError("file write failed")))
    assert "no space left on the device" in error_message(lambda: ck.atomic_save({}, path))
    monkeypatch.setattr(ck.torch, "save", lambda obj, f: (_ for _ in ()).throw(ValueError("a bug, not the disk")))
    with pytest.raises(ValueError, match="a bug"):  # other errors stay themselves
        ck.atomic_save({}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["a"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left by any failure
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert error_message(lambda: ck.atomic_save({}, blocker / "last.pt")) == (
        f"cannot write {str(blocker / 'last.pt')!r}: File exists; {FIX}")


def test_write_error_reasons():
    path = ck.Path("/nowhere/x.pt")
    assert str(ck.write_error(path, OSError(errno.ENOSPC, "No space left on device"))) == (
        f"cannot write '/nowhere/x.pt': no space left on the device; {FIX}")
    assert str(ck.write_error(path, PermissionError(errno.EACCES, "Permission denied"))) == (
        f"cannot write '/nowhere/x.pt': Permission denied; {FIX}")
    assert str(ck.write_error(path, RuntimeError("first line\nsecond line"))) == (
        f"cannot write '/nowhere/x.pt': first line; {FIX}")


def test_remove_stale_temps_removes_only_temp_files(tmp_path):
    for name in (".last.pt.abc123.tmp", ".best.pt.x.tmp", "last.pt", "notes.tmp", ".hidden"):
        (tmp_path / name).write_text("x")
    removed = ck.remove_stale_temps(tmp_path)
    assert [p.name for p in removed] == [".best.pt.x.tmp", ".last.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "last.pt", "notes.tmp"]
    assert ck.remove_stale_temps(tmp_path / "absent") == [] and ck.remove_stale_temps(tmp_path / "last.pt") == []


def test_rng_state_round_trip_restores_every_generator(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # numpy now holds a cached Gaussian and a position inside its key
    state = ck.rng_state()
    ck.atomic_save({"rng": state}, tmp_path / "rng.pt")  # as a checkpoint stores it: loadable with weights_only
    draw = lambda: (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())  # noqa: E731
    first = draw()
    ck.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert draw() == first


def test_load_checkpoint_messages(tmp_path):
    missing = tmp_path / "none.pt"
    assert error_message(lambda: ck.load_checkpoint(missing)) == (
        f"checkpoint {str(missing)!r} not found (train one with `contextseg train CONFIG`; it writes "
        f"OUTPUT_DIR/best.pt and OUTPUT_DIR/last.pt)")
    for name, obj in (("weights.pt", {"state_dict": {}}), ("list.pt", [1, 2])):
        torch.save(obj, tmp_path / name)
        assert error_message(lambda: ck.load_checkpoint(tmp_path / name)) == (
            f"{str(tmp_path / name)!r} is not a contextseg checkpoint (no 'model' entry); for official weights use "
            f"contextseg.load_official(...)")
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01 not a zip")
    assert "is not a readable checkpoint" in error_message(lambda: ck.load_checkpoint(tmp_path / "junk.pt"))
    torch.save({"model": {"w": torch.ones(1)}}, tmp_path / "ok.pt")
    assert ck.load_checkpoint(tmp_path / "ok.pt")["model"]["w"].tolist() == [1.0]


def test_load_state_dict_checked_names_every_kind_of_mismatch():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.weight"] = torch.zeros(4, 2)
    del state["1.bias"]
    state["2.weight"] = torch.zeros(1)
    assert error_message(lambda: ck.load_state_dict_checked(model, state, source="checkpoint 'x.pt'")) == (
        "checkpoint 'x.pt' does not fit this model: shape mismatches (e.g. a different num_classes or backbone): "
        "0.weight: checkpoint (4, 2) vs model (3, 2) | 1 missing keys, e.g. ['1.bias'] | 1 unexpected keys, e.g. "
        "['2.weight']. Build the model the checkpoint was trained with (contextseg.load_model(path) does).")
    many = {f"{i}.{p}": v for i in range(6) for p, v in (("weight", torch.zeros(1)), ("bias", torch.zeros(1)))}
    text = error_message(lambda: ck.load_state_dict_checked(torch.nn.Linear(1, 1), many))
    assert text.startswith("checkpoint does not fit this model: 2 missing keys, e.g. ['weight', 'bias'] | 12 "
                           "unexpected keys, e.g. ['0.weight', '0.bias', '1.weight']. ")
    good = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    ck.load_state_dict_checked(model, good)
    assert all((v == 0.5).all() for v in model.state_dict().values())


def test_model_args_and_model_from_checkpoint():
    assert ck.model_args({}) == {} and ck.model_args({"model_args": None}) == {}
    assert ck.model_args({"model_args": {"arch": "fcn"}}) == {"arch": "fcn", "align_corners": False}
    assert ck.model_args({"model_args": {"arch": "fcn", "align_corners": True}})["align_corners"] is True
    assert error_message(lambda: ck.model_from_checkpoint({"model": {}}, source="a.pt")) == (
        "checkpoint 'a.pt' has no 'model_args'; build the model with create_model(...) and load ckpt['model'] "
        "into it")
    args = {"arch": "fcn", "backbone": "hrnetv2_w18_small_v1", "num_classes": 3}
    built = ck.create_model(**args).train()
    ckpt = {"model": built.state_dict(), "model_args": args, "classes": ["a", "b", "c"], "palette": [[0, 0, 0]] * 3}
    model = ck.model_from_checkpoint(ckpt)
    assert not model.training and model.classes == ["a", "b", "c"] and model.palette == [[0, 0, 0]] * 3
    assert model.align_corners is False
    for name, value in model.state_dict().items():
        assert torch.equal(value, built.state_dict()[name])
    bare = ck.model_from_checkpoint({"model": built.state_dict(), "model_args": args})
    assert bare.classes is None and bare.palette is None


def test_load_model_names_the_file_and_takes_the_device(tmp_path):
    args = {"arch": "fcn", "backbone": "hrnetv2_w18_small_v1", "num_classes": 3}
    state = ck.create_model(**args).state_dict()
    ck.atomic_save({"model": state, "model_args": args}, tmp_path / "ok.pt")
    model = ck.load_model(tmp_path / "ok.pt", device="meta")
    assert all(p.device.type == "meta" for p in model.parameters()) and not model.training
    ck.atomic_save({"model": state, "model_args": {**args, "num_classes": 4}}, tmp_path / "other.pt")
    text = error_message(lambda: ck.load_model(tmp_path / "other.pt"))
    assert text.startswith(f"checkpoint {str(tmp_path / 'other.pt')!r} does not fit this model: shape mismatches")


def test_mismatch_lists_are_cut_and_any_one_kind_is_enough():
    model = torch.nn.Sequential(*[torch.nn.Linear(1, 1, bias=False) for _ in range(6)])
    state = {k: torch.zeros(2, 2) for k in model.state_dict()}  # six shape mismatches: four are named
    text = error_message(lambda: ck.load_state_dict_checked(model, state))
    assert text.count("checkpoint (2, 2) vs model (1, 1)") == 4 and "3.weight: checkpoint" in text
    assert "0.weight: checkpoint (2, 2) vs model (1, 1); 1.weight" in text
    only_missing = {k: v for k, v in model.state_dict().items() if k not in ("2.weight", "3.weight", "4.weight",
                                                                            "5.weight")}
    assert error_message(lambda: ck.load_state_dict_checked(model, only_missing)) == (
        "checkpoint does not fit this model: 4 missing keys, e.g. ['2.weight', '3.weight', '4.weight']. Build the "
        "model the checkpoint was trained with (contextseg.load_model(path) does).")
    assert error_message(lambda: ck.model_from_checkpoint({"model": {}})).startswith(
        "checkpoint 'checkpoint' has no 'model_args'")


def test_load_checkpoint_reads_zoo_names():
    ckpt = ck.load_checkpoint("zoo:synthetic-demo")
    assert ckpt["model_args"]["arch"] == "ocr" and "model" in ckpt
