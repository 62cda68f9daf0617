"""The failure catalogue, outputs (docs/reliability.md, "nothing lost, nothing silently wrong"): predict, pseudo-labels
and export never write over their inputs, ground truth or checkpoint; same-stem images keep apart outputs; every file
goes through a temp file + rename; one writer per output folder (a lock file); photos are read as they are shown
(EXIF orientation); the Python API refuses arrays it would misread; unreadable images stop the run or are skipped on
request; large images run in sliding windows. Each case: the exit status, one line naming the problem and the fix, no
traceback, and the files that must survive checked by hash.
"""
import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalogue import digests, one_clear_line, run_cli
from contextseg.cli import main
from contextseg.data import read_image, read_mask, write_synthetic_weak
from contextseg.engine.outputs import LOCK_NAME, output_stems
from contextseg.engine.predictor import Predictor
from contextseg.errors import ContextSegError

ROOT = Path(__file__).resolve().parents[1]
CFG = str(ROOT / "configs" / "synthetic_fcn.yaml")
TINY = ["data.kwargs={num_samples: 16, size: [64, 64]}", "data.crop_size=[64,64]", "data.batch_size=4",
        "data.num_workers=0", "train.iters=2", "train.eval_interval=2", "train.log_interval=1", "train.amp=none"]
WEAK_CFG = str(ROOT / "configs" / "weak" / "ssnet_synthetic.yaml")


def picture(path, size=(40, 48), seed=0, **save) -> Path:
    """A random RGB image file of (H, W) ``size``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, **save)
    return path


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", CFG, *TINY, f"output_dir={out}", "--no-progress"]) == 0
    return out / "best.pt"


def predict(capsys, ckpt, *args):
    return run_cli(capsys, "predict", *args, "--checkpoint", ckpt, "--device", "cpu", "--amp", "none",
                   "--backend", "eager", "--no-progress")


# ----------------------------------------------------------------------------- predict: inputs and names


def test_predict_refuses_an_out_folder_that_holds_the_inputs(ckpt, tmp_path, capsys):
    images = tmp_path / "images"
    picture(images / "a.png")
    picture(images / "b.jpg", seed=1)
    before = digests(images)
    for given in ([images], [images / "a.png"]):
        code, _, err = predict(capsys, ckpt, *given, "--out", images)
        assert code == 2
        one_clear_line(err, f"--out {images} holds the input images", "choose another folder")
        assert digests(images) == before
    (tmp_path / "file").write_text("keep")
    code, _, err = predict(capsys, ckpt, images, "--out", tmp_path / "file")
    assert code == 2
    one_clear_line(err, "is a file")
    assert (tmp_path / "file").read_text() == "keep"


def test_predict_keeps_same_stem_outputs_apart(ckpt, tmp_path, capsys):
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    sizes = {d1 / "x.jpg": (40, 48), d1 / "x.png": (32, 40), d1 / "y.png": (24, 32), d2 / "x.png": (48, 40)}
    for i, (p, size) in enumerate(sizes.items()):
        picture(p, size, seed=i)
    before = digests(d1, d2)
    out = tmp_path / "pred"
    code, printed, err = predict(capsys, ckpt, d1, d2, d1 / "y.png", "--out", out)  # y.png given twice: once
    assert code == 0, err
    assert "wrote 4 label maps" in printed
    expect = {"x_jpg.png": d1 / "x.jpg", "d1_x_png.png": d1 / "x.png", "y.png": d1 / "y.png",
              "d2_x_png.png": d2 / "x.png"}
    maps = {p.name for p in out.glob("*.png") if not p.stem.endswith("_color")}
    assert maps == set(expect)
    for name, image in expect.items():
        assert np.asarray(Image.open(out / name)).shape == sizes[image]
    assert digests(d1, d2) == before
    # the rule behind the names, and a clash only the suffixes make
    assert output_stems([Path("a/x.png"), Path("a/x_color.png")]) == ["x", "x_color_2"]


# ----------------------------------------------------------------------------- predict: temp files and the lock


def test_predict_writes_every_file_through_a_temp_file(ckpt, tmp_path, capsys, monkeypatch):
    picture(tmp_path / "in" / "a.png")
    picture(tmp_path / "in" / "b.png", seed=1)
    out = tmp_path / "pred"
    renames = []
    original_replace = os.replace

    def recording_replace(src, dst):
        renames.append((Path(src), Path(dst)))
        return original_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    code, _, err = predict(capsys, ckpt, tmp_path / "in", "--out", out)
    assert code == 0, err
    written = sorted(p for p in out.iterdir())
    assert len(written) == 6 and not (out / LOCK_NAME).exists()
    for path in written:
        src = next(s for s, d in renames if d == path)
        assert src.parent == out and src.name.startswith(f".{path.name}.") and src.name.endswith(".tmp")
    monkeypatch.setattr(os, "replace", original_replace)

    # killed half-way through an image: the files there are whole, no temp file and no lock is left
    calls = {"n": 0}
    original_save = Image.Image.save

    def save_then_die(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            original_save(self, fp, *args, **kwargs)  # half the bytes are in the temp file, then the kill
            raise KeyboardInterrupt
        return original_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_die)
    fresh = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        predict(capsys, ckpt, tmp_path / "in", "--out", fresh)
    monkeypatch.setattr(Image.Image, "save", original_save)
    left = sorted(p.name for p in fresh.iterdir())
    assert left == ["a.png", "a_color.png", "a_overlay.jpg", "b.png"], left
    for name in left:
        Image.open(fresh / name).load()


def test_predict_refuses_a_folder_another_run_writes_into(ckpt, tmp_path, capsys):
    picture(tmp_path / "in" / "a.png")
    out = tmp_path / "pred"
    out.mkdir()
    lock = out / LOCK_NAME
    lock.write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live process holds it
    before = digests(out)
    code, _, err = predict(capsys, ckpt, tmp_path / "in", "--out", out)
    assert code == 2
    one_clear_line(err, str(lock), "another contextseg run", "choose another --out")
    assert digests(out) == before

    # a killed run's lock (its process is gone) and half-written temp file: taken over, cleaned, with a warning
    lock.write_text(f"{dead_pid()} {socket.gethostname()}\n")
    stale = out / ".a.png.0badcafe.tmp"
    stale.write_bytes(b"half an image")
    code, printed, err = predict(capsys, ckpt, tmp_path / "in", "--out", out)
    assert code == 0, err
    assert "took over the stale lock" in err and "Traceback" not in err
    assert not lock.exists() and not stale.exists() and (out / "a.png").exists()


# ----------------------------------------------------------------------------- EXIF orientation


def test_photos_are_read_as_shown_exif_orientation(ckpt, tmp_path, capsys):
    stored = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)  # 60 wide, 40 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=exif)
    assert read_image(tmp_path / "photo.jpg").shape == (60, 40, 3)
    assert np.array_equal(read_image(tmp_path / "photo.png"), np.rot90(stored, k=-1))
    mask = (np.arange(40 * 60).reshape(40, 60) % 5).astype(np.uint8)
    Image.fromarray(mask).save(tmp_path / "plain_mask.png")
    Image.fromarray(mask).save(tmp_path / "turned_mask.png", exif=exif)
    assert np.array_equal(read_mask(tmp_path / "plain_mask.png"), mask)  # stored order
    assert np.array_equal(read_mask(tmp_path / "turned_mask.png"), np.rot90(mask, k=-1))  # its own tag
    photos = tmp_path / "photos"
    photos.mkdir()
    os.replace(tmp_path / "photo.jpg", photos / "photo.jpg")
    code, _, err = predict(capsys, ckpt, photos, "--out", tmp_path / "pred")
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "pred" / "photo.png")).shape == (60, 40)


# ----------------------------------------------------------------------------- the Python API's arrays


def test_the_python_api_refuses_arrays_it_would_misread(ckpt):
    pred = Predictor(ckpt, device="cpu", amp="none", backend="eager")
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    label = pred.predict(image)
    assert label.shape == (32, 48)
    assert np.array_equal(pred.predict(image / 255.0), label)  # floats in [0, 1] are scaled by 255
    assert np.array_equal(pred.predict((image / 255.0).astype(np.float32)), label)
    nan = (image / 255.0).copy()
    nan[3, 4, 1] = np.nan
    cases = [
        (image.astype(np.float64), r"\[0, 255\].*must be in \[0, 1\].*astype\(np.uint8\)"),
        (nan, "NaN or infinite.*nan_to_num"),
        (image > 127, "dtype bool; give uint8"),
        (image.astype(np.int64), "dtype int64; give uint8"),
        (image.tolist(), "list, not a numpy array; give a numpy array"),
        (np.zeros((0, 48, 3), np.uint8), "empty"),
        (image[:, :, 0], r"grayscale.*np.stack\(\[a\] \* 3, -1\)"),
        (np.dstack([image, image[:, :, :1]]), r"a\[..., :3\]"),
        (image.transpose(2, 0, 1), r"transpose\(1, 2, 0\)"),
    ]
    for bad, message in cases:
        for method in (pred.predict, pred.predict_proba, pred.predict_outputs):
            with pytest.raises(ContextSegError, match=message):
                method(bad)


# ----------------------------------------------------------------------------- unreadable images


def test_predict_names_an_unreadable_image_or_skips_it(ckpt, tmp_path, capsys):
    images = tmp_path / "images"
    picture(images / "a.png")
    picture(images / "b.png", seed=1)
    (images / "bad.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    whole = (images / "b.png").read_bytes()
    (images / "trunc.png").write_bytes(whole[:len(whole) // 2])  # a valid header, half the pixel data
    before = digests(images)
    out = tmp_path / "pred"
    code, _, err = predict(capsys, ckpt, images, "--out", out)
    assert code == 2
    one_clear_line(err, "bad.jpg", "--skip-bad")
    assert not out.exists() and digests(images) == before  # nothing written, nothing lost
    code, printed, err = predict(capsys, ckpt, images, "--out", out, "--skip-bad")
    assert code == 0, err
    assert "wrote 2 label maps" in printed
    assert "skipped 2 unreadable images" in printed and "bad.jpg" in printed and "trunc.png" in printed
    assert {p.name for p in out.glob("*.png")} == {"a.png", "a_color.png", "b.png", "b_color.png"}
    assert digests(images) == before


# ----------------------------------------------------------------------------- large images


def test_large_images_run_in_sliding_windows(ckpt, tmp_path, capsys):
    big = picture(tmp_path / "big" / "big.png", size=(100, 140))
    code, printed, err = predict(capsys, ckpt, big.parent, "--out", tmp_path / "pred", "--max-pixels", "5000")
    assert code == 0, err
    assert "above --max-pixels 5,000" in printed and "sliding windows of 64x64 (the training crop), stride 43x43" \
        in printed and "whole-image forward would hold" in printed
    assert printed.count("sliding windows") == 1
    assert np.asarray(Image.open(tmp_path / "pred" / "big.png")).shape == (100, 140)
    code, printed, err = predict(capsys, ckpt, big.parent, "--out", tmp_path / "auto", "--window", "auto")
    assert code == 0, err
    assert "--window auto" in printed and "64x64" in printed
    assert np.array_equal(np.asarray(Image.open(tmp_path / "auto" / "big.png")),
                          np.asarray(Image.open(tmp_path / "pred" / "big.png")))
    # under the limit: the whole image, as before
    whole = Predictor(ckpt, device="cpu", amp="none", backend="eager", max_pixels=10**6)
    windowed = Predictor(ckpt, device="cpu", amp="none", backend="eager", max_pixels=5000)
    image = read_image(big)
    assert whole.windows_for(image.shape[:2]) is None
    assert windowed.windows_for(image.shape[:2]) == ((64, 64), (43, 43))
    assert windowed.predict(image).shape == (100, 140)


# ----------------------------------------------------------------------------- pseudo-labels


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    base = tmp_path_factory.mktemp("weak")
    roots = write_synthetic_weak(base / "data", n_train=4, n_val=2, n_saliency=4, size=(32, 48))
    kwargs = ("data.kwargs={" + f"segmentation: {{dataset: folder, root: {roots['segmentation']}}}, "
              f"saliency: {{dataset: saliency_folder, root: {roots['saliency']}, val_every: 4}}" + "}")
    out = base / "stage1"
    assert main(["train", WEAK_CFG, kwargs, f"output_dir={out}", "data.crop_size=[32,48]", "data.batch_size=2",
                 "train.iters=1", "train.eval_interval=1", "train.amp=none", "--no-progress"]) == 0
    return Path(roots["segmentation"]), kwargs, out / "best.pt"


def test_pseudo_labels_never_write_over_the_ground_truth(stage1, tmp_path, capsys):
    seg, kwargs, ckpt = stage1
    masks, images = seg / "train" / "masks", seg / "train" / "images"
    before = digests(seg)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    (tmp_path / "link").symlink_to(masks, target_is_directory=True)
    for out, words in ((masks, ("holds the segmentation set's label maps", "choose a new folder")),
                       (tmp_path / "link", ("holds the segmentation set's label maps",)),
                       (images, ("holds the segmentation set's images",)),
                       (other, ("already holds other files", "no pseudo_labels.json"))):
        code, _, err = run_cli(capsys, "pseudo-labels", WEAK_CFG, kwargs, "--checkpoint", ckpt, "--out", out,
                               "--no-progress")
        assert code == 2
        one_clear_line(err, f"--out {out}", *words)
    assert digests(seg) == before and (other / "notes.txt").read_text() == "keep"

    fresh = tmp_path / "pseudo"
    for _ in range(2):  # a new folder, then the folder of that earlier run
        code, printed, err = run_cli(capsys, "pseudo-labels", WEAK_CFG, kwargs, "--checkpoint", ckpt, "--out", fresh,
                                     "--no-progress")
        assert code == 0, err
        report = json.loads((fresh / "pseudo_labels.json").read_text())
        assert report["complete"] is True and report["images"] == 4
    assert digests(seg) == before
    assert sorted(p.name for p in fresh.iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png",
                                                       "pseudo_labels.json"]
    (fresh / LOCK_NAME).write_text(f"{os.getpid()} {socket.gethostname()}\n")
    code, _, err = run_cli(capsys, "pseudo-labels", WEAK_CFG, kwargs, "--checkpoint", ckpt, "--out", fresh,
                           "--no-progress")
    assert code == 2
    one_clear_line(err, str(fresh / LOCK_NAME), "another contextseg run")


# ----------------------------------------------------------------------------- export and ONNX files


def test_export_never_replaces_the_checkpoint_or_a_foreign_file(ckpt, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    before = digests(ckpt)
    code, _, err = run_cli(capsys, "export", ckpt, "--out", ckpt)
    assert code == 2
    one_clear_line(err, "is the checkpoint being exported", ".onnx")
    foreign = tmp_path / "theirs.onnx"
    foreign.write_bytes(b"someone else's model")
    code, _, err = run_cli(capsys, "export", ckpt, "--out", foreign)
    assert code == 2
    one_clear_line(err, "is not an ONNX file contextseg exported", "choose another file")
    assert foreign.read_bytes() == b"someone else's model"
    code, _, err = run_cli(capsys, "export", ckpt, "--out", tmp_path / "model.pt")
    assert code == 2
    one_clear_line(err, "does not end in .onnx", "model.onnx")
    ours = tmp_path / "ours.onnx"
    for _ in range(2):  # a new file, then over the file it wrote
        code, printed, err = run_cli(capsys, "export", ckpt, "--out", ours, "--size", "64", "64", "--static",
                                     "--exporter", "torchscript")
        assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.onnx", "theirs.onnx"]
    assert digests(ckpt) == before


def test_a_corrupt_onnx_file_is_one_line(ckpt, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    bad = tmp_path / "model.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    picture(tmp_path / "in" / "a.png")
    code, _, err = predict(capsys, bad, tmp_path / "in", "--out", tmp_path / "pred")
    assert code == 2
    one_clear_line(err, "is not a readable ONNX file", "contextseg export")
    code, _, err = run_cli(capsys, "eval", CFG, *TINY, f"output_dir={tmp_path / 'e'}", "--checkpoint", bad,
                           "--no-progress")
    assert code == 2
    one_clear_line(err, "is not a readable ONNX file", "contextseg export")


# ----------------------------------------------------------------------------- eval over a folder with bad files


def test_eval_names_bad_pairs_or_skips_them(ckpt, tmp_path, capsys):
    """Without --skip-bad: exit 2, one line naming every bad mask before any scoring. With it: the other pairs are
    scored (the same mIoU as a folder without the bad pairs) and the bad ones are listed after the report."""
    from contextseg.data import write_synthetic_folder

    def evaluate(root, *extra):
        return run_cli(capsys, "eval", CFG, "data.dataset=folder", f"data.root={root}", "data.val_split=val",
                       "data.kwargs={}", "--checkpoint", ckpt, "--no-progress", "--backend", "eager", *extra)

    data, clean = tmp_path / "data", tmp_path / "clean"
    for root in (data, clean):
        write_synthetic_folder(root, n=6, size=(64, 64), seed=5, split="val")
    val = data / "val"
    mask = np.array(Image.open(val / "masks" / "00002.png"))
    mask[0, 0] = 9  # a value outside the 6 classes
    Image.fromarray(mask).save(val / "masks" / "00002.png")
    whole = (val / "images" / "00004.png").read_bytes()
    (val / "images" / "00004.png").write_bytes(whole[:len(whole) // 2])  # a valid header, half the pixels
    for name in ("00002", "00004"):  # the clean copy: the same folder without the two bad pairs
        for sub in ("images", "masks"):
            (clean / "val" / sub / f"{name}.png").unlink()
    before = digests(data)

    code, _, err = evaluate(data)
    assert code == 2
    one_clear_line(err, "00002.png", "[9]")
    code, printed, err = evaluate(data, "--skip-bad", "--out", tmp_path / "eval.json")
    assert code == 0, err
    assert "skipped 2 bad file(s)" in printed and "00002.png" in printed and "00004.png" in printed
    report = json.loads((tmp_path / "eval.json").read_text())
    assert len(report["skipped"]) == 2
    code, _, err = evaluate(clean, "--out", tmp_path / "clean.json")
    assert code == 0, err
    assert report["mIoU"] == json.loads((tmp_path / "clean.json").read_text())["mIoU"]
    assert digests(data) == before  # nothing written into the data
