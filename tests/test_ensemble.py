"""Ensembles of checkpoints in eval and predict: the mean of the members' softmax probabilities (CPU, tiny)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contextseg import create_model
from contextseg.cli import main
from contextseg.config import load_config
from contextseg.data import SyntheticScenes, eval_transform, write_synthetic_folder
from contextseg.engine.checkpoint import atomic_save
from contextseg.engine.predictor import Predictor
from contextseg.tasks import evaluate_checkpoint
from contextseg.errors import ContextSegError
from contextseg.metrics import SegMetric
from contextseg.models.ensemble import Ensemble

SIZE = (32, 48)


def save_model(path, arch, seed, num_classes=6):
    torch.manual_seed(seed)
    model = create_model(arch, backbone="hrnetv2_w18_small_v1", num_classes=num_classes)
    with torch.no_grad():  # move BN running statistics off their defaults, so that eval mode is not trivial
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    atomic_save({"model": model.state_dict(), "model_args": model.init_args,
                 "classes": list(SyntheticScenes.classes), "palette": [list(c) for c in SyntheticScenes.palette]}, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    # two different architectures: FCN and OCR heads (OCR also has an "aux" output, which an ensemble ignores)
    return save_model(d / "a.pt", "fcn", 0), save_model(d / "b.pt", "ocr", 1)


def cfg(tmp_path):
    return load_config(None, [f"output_dir={tmp_path}", "data.dataset=synthetic", "device=cpu",
                              f"data.kwargs={{num_samples: 3, size: [{SIZE[0]}, {SIZE[1]}]}}", "data.num_workers=0",
                              "train.amp=none", "train.channels_last=false"])


def image(i=0):
    return SyntheticScenes(num_samples=3, size=SIZE, split="val").raw(i)[0]


def test_same_checkpoint_twice_equals_the_single_model(ckpts, tmp_path):
    a, _ = ckpts
    one, two = Predictor(a, device="cpu", backend="eager"), Predictor([a, a], device="cpu")  # both eager
    assert isinstance(two.model, Ensemble) and not isinstance(one.model, Ensemble)
    assert torch.allclose(two.predict_proba(image()), one.predict_proba(image()), atol=1e-6)
    assert evaluate_checkpoint(cfg(tmp_path), [str(a), str(a)], progress=False) == \
        evaluate_checkpoint(cfg(tmp_path), str(a), progress=False)


def test_two_checkpoints_average_their_probabilities(ckpts, tmp_path):
    a, b = ckpts
    pa, pb = (Predictor(c, device="cpu").predict_proba(image()) for c in (a, b))
    pab = Predictor([a, b], device="cpu").predict_proba(image())
    assert pab.shape == (6, *SIZE)
    assert torch.allclose(pab, (pa + pb) / 2, atol=1e-6)
    assert not torch.allclose(pab, pa, atol=1e-3)

    # eval: by hand, each model's logits upsampled to the label size, softmax, mean, argmax
    models = [Predictor(c, device="cpu").model for c in (a, b)]
    val = SyntheticScenes(num_samples=3, size=SIZE, split="val", transform=eval_transform())
    metric = SegMetric(6, 255)
    with torch.no_grad():
        for i in range(len(val)):
            x, y = val[i]
            probs = sum(F.interpolate(m(x[None])["out"], size=y.shape, mode="bilinear", align_corners=True).softmax(1)
                        for m in models) / 2
            metric.update(probs.argmax(1), y[None])
    expected = metric.compute()
    got = evaluate_checkpoint(cfg(tmp_path), [str(a), str(b)], progress=False, out=str(tmp_path / "e.json"))
    assert got["mIoU"] == pytest.approx(expected["mIoU"]) and got["pixel_acc"] == pytest.approx(expected["pixel_acc"])
    single = evaluate_checkpoint(cfg(tmp_path), str(a), progress=False)
    assert got["per_class_iou"] != single["per_class_iou"]  # (untrained members: mostly one class each)
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["checkpoint"] == [str(a), str(b)] and report["ensemble"]


def test_ensemble_with_multiscale_and_flip(ckpts):
    """--scales/--flip apply to every member: the ensemble is the mean of the members' multi-scale predictions."""
    a, b = ckpts
    opts = dict(scales=[0.75, 1.0], flip=True, device="cpu")
    members = [Predictor(c, **opts).predict_proba(image(1)) for c in (a, b)]
    both = Predictor([a, b], **opts)
    assert all(type(m).__name__ == "MultiScale" for m in both.model.members)
    assert torch.allclose(both.predict_proba(image(1)), (members[0] + members[1]) / 2, atol=1e-6)
    assert torch.allclose(Predictor([a, a], **opts).predict_proba(image(1)), members[0], atol=1e-6)


def test_cli_eval_and_predict_take_several_checkpoints(ckpts, tmp_path, capsys):
    a, b = ckpts
    common = ["configs/synthetic_fcn.yaml", f"output_dir={tmp_path}", "device=cpu",
              f"data.kwargs={{num_samples: 2, size: [{SIZE[0]}, {SIZE[1]}]}}", "data.num_workers=0", "train.amp=none",
              "train.channels_last=false"]
    assert main(["eval", *common, "--checkpoint", str(a), str(b), "data.eval_batch_size=2",  # an override after them
                 "--out", str(tmp_path / "m.json"), "--no-progress"]) == 0
    assert "mean" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["checkpoint"] == [str(a), str(b)]
    write_synthetic_folder(tmp_path / "imgs", n=2, size=SIZE)
    assert main(["predict", str(tmp_path / "imgs" / "images"), "--checkpoint", str(a), str(b), "--out",
                 str(tmp_path / "pred"), "--device", "cpu", "--flip", "--no-progress"]) == 0
    from PIL import Image

    label = np.array(Image.open(tmp_path / "pred" / "00000.png"))
    expected = Predictor([a, b], device="cpu", flip=True).predict(np.array(Image.open(tmp_path / "imgs" / "images" / "00000.png").convert("RGB")))
    assert label.shape == SIZE and np.array_equal(label, expected)


def test_ensemble_of_different_classes_is_a_clear_error(ckpts, tmp_path):
    a, _ = ckpts
    c = save_model(tmp_path / "c.pt", "fcn", 2, num_classes=4)
    with pytest.raises(ContextSegError, match="differ in num_classes"):
        Predictor([a, c], device="cpu")
    with pytest.raises(ContextSegError, match="predicts 4 classes"):
        evaluate_checkpoint(cfg(tmp_path), [str(a), str(c)], progress=False)
