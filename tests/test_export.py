"""ONNX export (dynamo and TorchScript exporters), onnxruntime parity with PyTorch, OnnxModel behind eval / predict,
and `contextseg bench`. Skipped where the export extra (onnx, onnxruntime, onnxscript) is not installed."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.slow  # exports take seconds each; CI runs them (make test with CI=true)

from contextseg import ContextSegError, Predictor, create_model, load_model  # noqa: E402
from contextseg.cli import main  # noqa: E402
from contextseg.data.synthetic import write_synthetic_folder  # noqa: E402
from contextseg.export import OnnxModel, OnnxPredictor, export_onnx  # noqa: E402

SMALL = "hrnetv2_w18_small_v1"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-class OCR checkpoint trained 3 steps on generated folders, its data and one ONNX export of it."""
    root = tmp_path_factory.mktemp("export")
    write_synthetic_folder(root / "data", n=4, size=(48, 64), split="train")
    write_synthetic_folder(root / "data", n=2, size=(48, 64), seed=1, split="val")
    overrides = [f"output_dir={root / 'run'}", "model.arch=ocr", f"model.backbone={SMALL}", "data.dataset=folder",
                 f"data.root={root / 'data'}", "data.crop_size=[48,64]", "data.batch_size=2", "data.num_workers=0",
                 "train.iters=3", "train.eval_interval=3", "train.amp=none"]
    assert main(["train", "configs/synthetic_ocr.yaml", *overrides, "--no-progress"]) == 0
    ckpt = root / "run" / "best.pt"
    report = export_onnx(ckpt, root / "model.onnx", size=(48, 64))
    return root, overrides, ckpt, report


def test_export_matches_pytorch_at_any_size(trained):
    root, _, ckpt, report = trained
    assert report.exporter == "dynamo" and report.max_abs_diff < 1e-3 and report.label_agreement > 0.999
    assert report.checked_sizes == [[48, 64], [81, 49]]  # the traced size and another, odd one: dynamic H, W
    model = OnnxModel(root / "model.onnx")
    assert model.num_classes == 6 and model.classes[0] == "sky" and len(model.palette) == 6
    torch_model = Predictor(ckpt).model
    x = torch.randn(3, 3, 37, 90)  # batch 3, a size never traced
    with torch.no_grad():
        ref = torch.nn.functional.interpolate(torch_model(x)["out"], size=(37, 90), mode="bilinear",
                                              align_corners=True)
    torch.testing.assert_close(model(x)["out"], ref, atol=1e-3, rtol=1e-3)
    image = np.asarray(Image.open(next((root / "data" / "val" / "images").iterdir())).convert("RGB"))
    assert (OnnxPredictor(root / "model.onnx").predict(image) == Predictor(ckpt).predict(image)).mean() > 0.999


def test_eval_and_predict_take_onnx_files(trained, tmp_path, capsys):
    root, overrides, ckpt, _ = trained
    scores = []
    for model in (ckpt, root / "model.onnx"):
        out = tmp_path / f"{model.suffix[1:]}.json"
        assert main(["eval", "configs/synthetic_ocr.yaml", *overrides, "train.channels_last=false", "--checkpoint",
                     str(model), "--out", str(out), "--no-progress"]) == 0
        scores.append(json.loads(out.read_text())["mIoU"])
    assert scores[1] == pytest.approx(scores[0], abs=1e-3)
    assert main(["predict", str(root / "data" / "val" / "images"), "--checkpoint", str(root / "model.onnx"),
                 "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    assert np.array(Image.open(tmp_path / "pred" / "00000.png")).shape == (48, 64)


def test_a_classifier_exports_at_its_crop_and_eval_and_predict_take_the_file(tmp_path, capsys):
    """zoo:cifar10-saol exports at its training crop (32x32, read from the checkpoint's config) with a dynamic
    batch; onnxruntime matches PyTorch, another size is one clear error, and eval and predict take the file with
    the checkpoint's results (the manifest's top-1 on the shipped samples, the same classes)."""
    from contextseg.engine.zoo import manifest, zoo_dir
    from contextseg.tasks import TASKS
    from contextseg.zoo_pack import sample_config

    path = tmp_path / "saol.onnx"
    assert main(["export", "zoo:cifar10-saol", "--out", str(path)]) == 0
    assert "on 32x32" in capsys.readouterr().out
    model = OnnxModel(path)
    assert (model.task, model.input_size, model.num_classes) == ("classification", (32, 32), 10)
    x = torch.randn(5, 3, 32, 32)  # a batch size never traced
    with torch.no_grad():
        torch.testing.assert_close(model(x)["out"], load_model("zoo:cifar10-saol")(x)["out"], atol=1e-4, rtol=1e-4)
    with pytest.raises(ContextSegError, match="takes 32x32 images"):
        model(torch.randn(1, 3, 40, 40))
    with pytest.raises(ContextSegError, match="is an image classifier"):
        OnnxPredictor(path)
    entry = manifest()["cifar10-saol"]
    got = TASKS["classification"].evaluate_checkpoint(sample_config(entry, zoo_dir()), str(path), progress=False)
    assert got["top1"] == pytest.approx(entry["samples"]["metrics"]["top1"], abs=2e-3)
    images = [str(p) for p in sorted((zoo_dir() / entry["samples"]["root"] / "val").rglob("*.jpg"))[:4]]
    classes = []
    for name, ckpt in (("onnx", str(path)), ("pt", "zoo:cifar10-saol")):
        assert main(["predict", *images, "--checkpoint", ckpt, "--out", str(tmp_path / name), "--amp", "none",
                     "--no-progress"]) == 0
        classes.append([r["class"] for r in json.loads((tmp_path / name / "predictions.json").read_text())])
    assert classes[0] == classes[1] and len(classes[0]) == 4
    assert main(["bench", "zoo:cifar10-saol", "--batch", "2", "--repeats", "1", "--warmup", "0", "--modes",
                 "onnxruntime"]) == 0  # the backend's cached export of a classifier: (B, K), dynamic batch
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("infer onnxruntime")]
    assert row and row[0].endswith("100.000%")


def test_labels_output_torchscript_static(tmp_path):
    torch.manual_seed(0)
    model = create_model("fcn", backbone=SMALL, num_classes=4).eval()
    report = export_onnx(model, tmp_path / "labels.onnx", size=(40, 56), output="labels", dynamic=False,
                         exporter="torchscript")
    assert report.exporter == "torchscript" and report.checked_sizes == [[40, 56]]
    assert report.label_agreement > 0.999
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "labels.onnx"), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"image": np.random.randn(1, 3, 40, 56).astype(np.float32)})[0]
    assert labels.shape == (1, 40, 56) and labels.dtype == np.int64
    with pytest.raises(ContextSegError, match="exported with output='labels'.*--output logits"):
        OnnxModel(tmp_path / "labels.onnx")
    with pytest.raises(ContextSegError, match="not found; write one with `contextseg export"):
        OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(ContextSegError, match="unknown export output 'probs'"):
        export_onnx(model, tmp_path / "x.onnx", output="probs")


def test_export_and_bench_cli(trained, tmp_path, capsys):
    root, _, ckpt, _ = trained
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--size", "32", "48", "--static",
                 "--exporter", "torchscript"]) == 0
    assert "onnxruntime vs PyTorch on 32x48" in capsys.readouterr().out
    out = tmp_path / "bench.json"
    assert main(["bench", f"fcn:{SMALL}", "--size", "32", "48", "--batch", "2", "--repeats", "2", "--warmup", "1",
                 "--modes", "fp32", "fused", "onnx", "--out", str(out)]) == 0
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}  # old names: fp32, fused, onnx
    assert set(rows) == {"eager", "torch", "onnxruntime"} and rows["eager"]["speedup"] == 1.0
    assert rows["torch"]["rel_diff"] < 1e-4 and rows["onnxruntime"]["rel_diff"] < 1e-4
    assert "img/s" in capsys.readouterr().out
    assert main(["bench", "nonsense"]) == 2
    assert "neither a checkpoint file nor ARCH:BACKBONE" in capsys.readouterr().err


def test_bench_val_prints_the_mIoU_change_of_approximate_modes(trained, tmp_path, capsys):
    import yaml

    from contextseg.config import load_config

    root, overrides, ckpt, _ = trained
    cfg = load_config("configs/synthetic_ocr.yaml", overrides)
    (tmp_path / "val.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "bench.json"
    assert main(["bench", str(ckpt), "--size", "48", "64", "--repeats", "1", "--warmup", "0", "--modes", "eager",
                 "int8", "--calibration", str(root / "data" / "train" / "images"), "--val", str(tmp_path / "val.yaml"),
                 "--out", str(out)]) == 0
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["eager"]["mIoU_change"] == 0.0 and abs(rows["int8"]["mIoU_change"]) < 0.2
    assert "val mIoU through int8" in capsys.readouterr().out
