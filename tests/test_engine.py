"""Training, checkpoints and resume on small synthetic data (CPU, seconds)."""
import copy
import os

import pytest
import torch

from contextseg import create_model, load_model
from contextseg.config import load_config
from contextseg.engine import checkpoint as ckpt_mod
from contextseg.engine.checkpoint import atomic_save, load_checkpoint
from contextseg.engine.schedules import PolyLR
from contextseg.tasks import run_training as train
from contextseg.errors import ContextSegError


def tiny_cfg(tmp_path, *extra):
    return load_config(None, [
        f"output_dir={tmp_path}", "model.arch=fcn", "model.backbone=hrnetv2_w18_small_v1",
        "data.dataset=synthetic", "data.kwargs={num_samples: 16, size: [64, 64]}", "data.crop_size=[64,64]",
        "data.batch_size=4", "data.num_workers=0", "train.log_interval=1", "train.lr=0.02", *extra])


def test_poly_schedule_with_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = PolyLR(opt, total_iters=10, power=1.0, warmup_iters=2, warmup_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.55)
    assert lrs[2] == pytest.approx(1.0) and lrs[6] == pytest.approx(0.5)
    assert lrs == sorted(lrs[:3]) + sorted(lrs[3:], reverse=True)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_is_fused_and_updates_as_the_plain_loop(name):
    from types import SimpleNamespace
    from contextseg.engine.trainer import build_optimizer

    torch.manual_seed(0)
    # no normalisation after a layer: Adam would scale the rounding noise of gradients that are zero in exact
    # arithmetic up to +-lr, so the two rounding orders could only be compared loosely
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    plain = copy.deepcopy(net)
    cfg = SimpleNamespace(optimizer=name, lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt = build_optimizer(net, cfg)
    assert all(g["fused"] for g in opt.param_groups)
    ref = {"sgd": torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3),
           "adamw": torch.optim.AdamW(plain.parameters(), lr=0.05, weight_decay=1e-3)}[name]
    x = torch.randn(16, 6)
    for _ in range(3):
        for model, o in ((net, opt), (plain, ref)):
            o.zero_grad()
            (model(x) - 1).square().mean().backward()
            o.step()
    for a, b in zip(net.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_training_loss_falls_and_miou_rises(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.iters=60", "train.eval_interval=20", "model.arch=ocr")
    summary = train(cfg, progress=False)
    records = list(map(eval_json, open(tmp_path / "metrics.jsonl")))
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    mious = [r["mIoU"] for r in records if r["kind"] == "val"]
    assert len(mious) == 3 and mious[-1] > mious[0]
    # a constant prediction of the majority class ("ground", ~half the pixels) scores ~8% mIoU
    assert summary["best"] > 0.2
    for name in ("best.pt", "last.pt", "config.yaml", "curves.png", "summary.json"):
        assert (tmp_path / name).exists(), name


def eval_json(line):
    import json

    return json.loads(line)


def test_checkpoint_rebuilds_model_without_config(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.iters=2", "train.eval_interval=2")
    train(cfg, progress=False)
    model = load_model(tmp_path / "last.pt")
    assert model.init_args["arch"] == "fcn" and model.num_classes == 6
    assert model.classes[0] == "sky"
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "epoch", "step", "config", "metrics", "rng"}
    x = torch.randn(1, 3, 64, 64)
    ref = create_model(**ckpt["model_args"])
    ref.load_state_dict(ckpt["model"])
    assert torch.equal(model(x)["out"], ref.eval()(x)["out"])


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(3)}}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


def test_resume_matches_uninterrupted_run(tmp_path):
    extra = ("train.iters=8", "train.eval_interval=100", "deterministic=true", "model.arch=ocr")
    full = tmp_path / "full"
    train(tiny_cfg(full, *extra), progress=False)
    part = tmp_path / "part"
    train(tiny_cfg(part, *extra), progress=False, stop_at=3)  # pauses mid-epoch (4 batches per epoch)
    assert load_checkpoint(part / "last.pt")["step"] == 3
    train(tiny_cfg(part, *extra), progress=False, resume=str(part / "last.pt"))
    a, b = load_checkpoint(full / "last.pt")["model"], load_checkpoint(part / "last.pt")["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    model = create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=6)
    other = create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=19)
    atomic_save({"model": other.state_dict()}, tmp_path / "x.pt")
    with pytest.raises(ContextSegError, match="shape mismatch"):
        ckpt_mod.load_state_dict_checked(model, load_checkpoint(tmp_path / "x.pt")["model"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ContextSegError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ContextSegError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
