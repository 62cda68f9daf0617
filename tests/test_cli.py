"""The CLI end to end on tiny generated folders: train (a few iterations), eval, predict, errors."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from contextseg.cli import main
from contextseg.data.synthetic import write_synthetic_folder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_synthetic_folder(root, n=8, size=(48, 64), split="train")
    write_synthetic_folder(root, n=3, size=(48, 64), seed=1, split="val")
    return root


def common(data_root, out):
    return [f"output_dir={out}", "model.arch=ocr", "model.backbone=hrnetv2_w18_small_v1",
            "data.dataset=folder", f"data.root={data_root}", "data.crop_size=[48,64]",
            "data.batch_size=4", "data.num_workers=0", "train.iters=3", "train.eval_interval=3"]


def test_train_eval_predict(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "configs/synthetic_ocr.yaml", *common(data_root, out), "--no-progress"]) == 0
    assert (out / "best.pt").exists() and (out / "metrics.jsonl").exists()
    assert main(["eval", "configs/synthetic_ocr.yaml", *common(data_root, out), "--checkpoint", str(out / "best.pt"),
                 "--out", str(out / "eval.json"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "mean" in printed and "triangle" in printed
    pred_dir = tmp_path / "pred"
    assert main(["predict", str(data_root / "val" / "images"), "--checkpoint", str(out / "best.pt"),
                 "--out", str(pred_dir), "--no-progress"]) == 0
    label = np.array(Image.open(pred_dir / "00000.png"))
    assert label.shape == (48, 64) and label.max() < 6
    assert (pred_dir / "00000_overlay.jpg").exists() and (pred_dir / "00000_color.png").exists()


def run_error(argv, capsys):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_missing_dataset_folder(tmp_path, capsys):
    err = run_error(["train", "configs/synthetic_ocr.yaml", "data.dataset=camvid",
                     f"data.root={tmp_path / 'nowhere'}", "--no-progress"], capsys)
    assert "nowhere" in err and "data.root" in err


def test_unknown_model_name(data_root, tmp_path, capsys):
    err = run_error(["train", "configs/synthetic_ocr.yaml", *common(data_root, tmp_path), "model.arch=ocrr"], capsys)
    assert "ocrr" in err and "ocr" in err


def test_label_out_of_range(tmp_path, capsys):
    root = tmp_path / "bad"
    write_synthetic_folder(root, n=4, size=(48, 64), split="train")
    write_synthetic_folder(root, n=2, size=(48, 64), split="val")
    mask = root / "train" / "masks" / "00001.png"
    m = np.array(Image.open(mask))
    m[0, 0] = 9  # only 6 classes
    Image.fromarray(m).save(mask)
    err = run_error(["train", "configs/synthetic_ocr.yaml", *common(root, tmp_path / "o"), "--no-progress"], capsys)
    assert "00001" in err and "9" in err


def test_image_mask_size_mismatch(tmp_path, capsys):
    root = tmp_path / "bad"
    write_synthetic_folder(root, n=4, size=(48, 64), split="train")
    write_synthetic_folder(root, n=2, size=(48, 64), split="val")
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(root / "train" / "masks" / "00002.png")
    err = run_error(["train", "configs/synthetic_ocr.yaml", *common(root, tmp_path / "o"), "--no-progress"], capsys)
    assert "00002" in err


def test_missing_checkpoint(tmp_path, capsys):
    err = run_error(["predict", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)],
                    capsys)
    assert "none.pt" in err and "not found" in err


def test_console_entry_point_lists_models():
    out = subprocess.run([sys.executable, "-m", "contextseg", "models"], capture_output=True, text=True, check=True)
    assert "ocr" in out.stdout and "hrnetv2_w48" in out.stdout
