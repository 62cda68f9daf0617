"""The model zoo: every shipped entry loads from safetensors with its sha256 checked and reproduces, on the
validation images shipped with it, the metrics its manifest records; packing a checkpoint round-trips."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import contextseg
from contextseg.cli import main
from contextseg.engine.zoo import manifest, zoo_checkpoint, zoo_dir
from contextseg.errors import ContextSegError
from contextseg.tasks import TASKS, run_training
from contextseg.zoo_pack import add_to_zoo, sample_config

ROOT = Path(__file__).resolve().parents[1]
MODELS = manifest()
REQUIRED = {"name", "task", "file", "sha256", "dtype", "model_args", "dataset", "classes", "palette", "normalisation",
            "metrics", "command", "config", "machine", "trained", "samples"}


def test_zoo_is_small_enough():
    assert MODELS, f"no zoo manifest at {zoo_dir()}"
    sizes = {n: (zoo_dir() / e["file"]).stat().st_size / 2**20 for n, e in MODELS.items()}
    assert all(s <= 15 for s in sizes.values()), sizes
    total = sum(p.stat().st_size for p in zoo_dir().rglob("*") if p.is_file()) / 2**20
    assert total <= 60, f"zoo/ holds {total:.1f} MB"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_entry_loads_and_reproduces_its_sample_metrics(name, capsys):
    entry = MODELS[name]
    assert REQUIRED <= set(entry), REQUIRED - set(entry)
    assert (ROOT / entry["config_file"]).is_file()
    model = contextseg.load_model(f"zoo:{name}")  # sha256 checked, safetensors: no pickle
    assert model.num_classes == entry["model_args"]["num_classes"] and model.classes == entry["classes"]
    task = TASKS[entry["task"]]
    got = task.evaluate_checkpoint(sample_config(entry, zoo_dir()), f"zoo:{name}", progress=False, backend="eager")
    for key, value in entry["samples"]["metrics"].items():
        assert got[key] == pytest.approx(value, abs=2e-3), key


def test_damaged_or_unknown_entries_are_one_clear_error(tmp_path, monkeypatch):
    name = sorted(MODELS)[0]
    copy = tmp_path / "zoo"
    copy.mkdir()
    shutil.copy(zoo_dir() / "manifest.json", copy)
    data = bytearray((zoo_dir() / MODELS[name]["file"]).read_bytes())
    data[-1] ^= 0xFF
    (copy / MODELS[name]["file"]).write_bytes(bytes(data))
    monkeypatch.setenv("CONTEXTSEG_ZOO", str(copy))
    with pytest.raises(ContextSegError, match="sha256"):
        zoo_checkpoint(name)
    with pytest.raises(ContextSegError, match="no zoo model 'nope'"):
        contextseg.load_model("zoo:nope")
    assert main(["predict", str(tmp_path), "--model", "nope", "--out", str(tmp_path / "p")]) == 2


def test_cli_lists_and_predicts_with_a_zoo_model(tmp_path, capsys):
    assert main(["zoo"]) == 0
    listing = capsys.readouterr().out
    assert all(n in listing for n in MODELS)
    entry = MODELS["synthetic-demo"]
    image = next((zoo_dir() / entry["samples"]["root"] / "val" / "images").iterdir())
    assert main(["predict", str(image), "--model", "synthetic-demo", "--out", str(tmp_path), "--no-progress"]) == 0
    label = np.asarray(Image.open(tmp_path / f"{image.stem}.png"))
    assert label.shape == np.asarray(Image.open(image)).shape[:2] and label.max() < len(entry["classes"])


def test_add_to_zoo_round_trip(tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "task": "segmentation", "output_dir": str(tmp_path / "run"),
        "model": {"arch": "fcn", "backbone": "hrnetv2_w18_small_v1"},
        "data": {"dataset": "synthetic", "kwargs": {"num_samples": 16, "size": [64, 64]}, "crop_size": [64, 64],
                 "batch_size": 4, "num_workers": 0},
        "train": {"iters": 4, "lr": 0.02, "eval_interval": 4, "amp": "none"}}))
    from contextseg.config import load_config

    run_training(load_config(cfg_path), progress=False)
    root = tmp_path / "zoo"
    entry = add_to_zoo("tiny", str(tmp_path / "run" / "best.pt"), str(cfg_path), samples=2, root=root)
    assert entry["dtype"] in ("float16", "float32") and abs(entry["float16_change"]) < 1
    assert json.loads((root / "manifest.json").read_text())["models"][0]["name"] == "tiny"
    assert len(list((root / "samples" / "tiny" / "val" / "images").iterdir())) == 2
    ckpt = zoo_checkpoint("tiny", root)
    assert ckpt["model_args"]["arch"] == "fcn" and ckpt["config"]["task"] == "segmentation"


def test_bench_times_a_classifier_at_its_crop_and_reads_a_checkpoint_once(capsys, monkeypatch):
    """A classifier (zoo:cifar10-gap) is timed at its 32x32 training crop, inference and a training step, every
    mode agreeing with eager on every image; --val (an mIoU change) refuses it in one line; a checkpoint's file is
    read once (the model and its crop come from one read)."""
    import contextseg.engine.checkpoint as checkpoint

    assert main(["bench", "zoo:cifar10-gap", "--batch", "3", "--repeats", "1", "--warmup", "0", "--modes", "eager",
                 "torch", "--train", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "batch 3 x 32x32" in out and out.count("100.000%") == 2 and "train fp32" in out
    assert main(["bench", "zoo:cifar10-gap", "--val", "configs/cifar10/gap_resnet20.yaml"]) == 2
    err = capsys.readouterr().err
    assert "--val reports the mIoU change of dense models" in err and "Traceback" not in err
    reads = []
    original = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda *a, **k: reads.append(a[0]) or original(*a, **k))
    assert main(["bench", "zoo:synthetic-demo", "--size", "32", "32", "--repeats", "1", "--warmup", "0",
                 "--modes", "eager"]) == 0
    assert reads == ["zoo:synthetic-demo"]


def test_served_at_runs_the_trained_weights_on_the_resized_input():
    """zoo add --scales 0.5: the packed model = the trained one on the half-size image, logits back at full size."""
    import torch
    import torch.nn.functional as F

    from contextseg.models import create_model
    from contextseg.zoo_pack import served_at

    torch.manual_seed(0)
    plain = create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=3).eval()
    ckpt = {"model": plain.state_dict(), "model_args": dict(plain.init_args), "step": 7}
    packed = served_at(ckpt, [0.5])
    assert packed["step"] == 7 and packed["model_args"]["multiscale"]["scales"] == [0.5]
    served = create_model(**packed["model_args"]).eval()
    served.load_state_dict(packed["model"])
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        want = F.interpolate(plain(F.interpolate(x, size=(32, 48), mode="bilinear"))["out"], size=(64, 96),
                             mode="bilinear", align_corners=plain.init_args["align_corners"])
        got = served(x)["out"]
    assert got.shape == (1, 3, 64, 96) and torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ContextSegError, match="drop --scales"):
        served_at(packed, [0.5])


def test_zoo_eval_reads_a_served_at_scale_model_images_at_their_own_size():
    """camvid-ocr was trained on CamVid read at half size and is served at scale 0.5: `eval zoo:camvid-ocr` reads
    the val images at full size (its eval_overrides), `train zoo:camvid-ocr` keeps the exact training config."""
    from argparse import Namespace

    from contextseg.cli import _config

    e = MODELS["camvid-ocr"]
    assert e["model_args"]["multiscale"]["scales"] == [0.5] and e["eval_overrides"] == ["data.kwargs={}"]
    args = Namespace(config="zoo:camvid-ocr", overrides=["data.batch_size=2"])
    assert _config(args, evaluation=True).data.kwargs == {}
    trained = _config(args)
    assert trained.data.kwargs == {"image_scale": 0.5} and trained.data.batch_size == 2
