"""Salient object detection through the engine: the saliency datasets (binary masks, deterministic split), the PFA
edge-preserving loss, SOD-metric evaluation, and `contextseg train` / `eval` on a generated folder."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from contextseg.cli import main
from contextseg.data import build_dataset
from contextseg.engine.evaluator import EvalRuntime
from contextseg.tasks.saliency import evaluate_saliency, saliency_maps
from contextseg.losses import build_loss
from contextseg.losses.saliency import EdgePreservingLoss, laplace_edges


def write_sod_folder(root, n=12, size=(40, 48), seed=0):
    """Images with a bright disc on noise; masks 255 inside the disc, with a grey (antialiased) rim."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size[0], :size[1]]
    for i in range(n):
        cy, cx, r = rng.integers(12, 28), rng.integers(12, 36), rng.integers(6, 11)
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        mask = np.clip((r + 0.5 - d) * 255, 0, 255).astype(np.uint8)
        image = rng.integers(0, 90, (*size, 3)).astype(np.uint8)
        image[d < r] = [220, 200, 60]
        Image.fromarray(image).save(root / "images" / f"{i:03d}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


def test_dataset_binarises_and_splits(tmp_path):
    root = write_sod_folder(tmp_path / "sod")
    train = build_dataset("saliency_folder", "train", root=root, val_every=4)
    val = build_dataset("saliency_folder", "val", root=root, val_every=4)
    assert (len(train), len(val)) == (9, 3) and train.task == "saliency"
    assert [f.stem for f in val.files] == ["003", "007", "011"]
    image, label = val.raw(0)
    raw = np.asarray(Image.open(root / "masks" / "003.png"))
    assert set(np.unique(label)) == {0, 1} and np.array_equal(label, (raw > 128).astype(np.uint8))
    assert len(build_dataset("saliency_folder", "all", root=root)) == 12


def test_edge_loss_ignores_padding_and_prefers_the_truth():
    torch.manual_seed(0)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, 4:12, 4:12] = 1
    loss = EdgePreservingLoss()
    good, bad = (labels.float() * 2 - 1).unsqueeze(1) * 6, -(labels.float() * 2 - 1).unsqueeze(1) * 6
    assert loss(good, labels) < 0.2 * loss(bad, labels)
    padded = labels.clone()
    padded[:, :, 14:] = 255
    x = torch.randn(1, 1, 16, 16)
    y = x.clone()
    y[..., 14:] += 50  # logits under padding change, the loss does not
    assert torch.equal(loss(x, padded), loss(y, padded))
    edges = laplace_edges(labels.unsqueeze(1).float())
    assert edges[0, 0, 8, 8] == 0 and edges[0, 0, 4, 8] > 0.9  # inside flat, on the boundary strong
    x.requires_grad_(True)
    build_loss("edge_hold", {"out": 1.0})({"out": x}, labels)[0].backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(Exception, match="one logit map"):
        loss(torch.randn(1, 2, 16, 16), labels)


class Oracle(torch.nn.Module):
    """Logits +-8 from the batch's own labels (set before each call): a perfect saliency model."""

    def forward(self, x):
        return {"out": self.labels.float().unsqueeze(1).mul(16).sub(8)}


def test_evaluate_saliency_perfect_model(tmp_path):
    root = write_sod_folder(tmp_path / "sod")
    val = build_dataset("saliency_folder", "val", root=root, val_every=4)
    oracle = Oracle()
    batches = []
    for i in range(len(val)):
        x, y = val[i]
        batches.append((x.unsqueeze(0), y.unsqueeze(0)))

    class Loader(list):
        def __iter__(self):
            for x, y in list.__iter__(self):
                oracle.labels = y
                yield x, y
    result = evaluate_saliency(oracle, Loader(batches), EvalRuntime(progress=False))
    assert result["images"] == 3 and result["mae"] < 1e-3 and result["max_f"] > 0.999 and result["s_measure"] > 0.99
    maps = saliency_maps(torch.full((1, 1, 4, 4), 100.0), (8, 8))
    assert maps.shape == (1, 8, 8) and maps.dtype == np.uint8 and (maps == 255).all()


def tiny_run(root, out, iters: int) -> list[str]:
    """Overrides of configs/ecssd/pfa_vgg16.yaml for a few 32x32 steps on a generated folder."""
    return [f"output_dir={out}", "data.dataset=saliency_folder", f"data.root={root}", "data.kwargs={val_every: 4}",
            "data.crop_size=[32,32]", "data.batch_size=2", "data.num_workers=0", f"train.iters={iters}",
            f"train.eval_interval={iters}", "train.amp=none", "train.channels_last=false", "train.warmup_iters=0"]


def test_train_and_eval_cli(tmp_path, capsys):
    root = write_sod_folder(tmp_path / "sod")
    out = tmp_path / "run"
    common = tiny_run(root, out, iters=3)
    assert main(["train", "configs/ecssd/pfa_vgg16.yaml", *common, "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"mae", "max_f", "s_measure", "max_e", "w_f"} <= set(summary["final"]) and summary["final"]["images"] == 3
    assert "max F" in capsys.readouterr().out and (out / "best.pt").exists() and (out / "curves.png").exists()
    assert main(["eval", "configs/ecssd/pfa_vgg16.yaml", *common, "--checkpoint", str(out / "best.pt"),
                 "--out", str(tmp_path / "eval.json"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["max_f"] == pytest.approx(summary["final"]["max_f"])
    assert main(["predict", str(root / "images" / "003.jpg"), "--checkpoint", str(out / "best.pt"),
                 "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    saliency = np.asarray(Image.open(tmp_path / "pred" / "003_saliency.png"))
    label = np.asarray(Image.open(tmp_path / "pred" / "003.png"))
    assert saliency.shape == label.shape == (40, 48) and np.array_equal(label, (saliency > 127).astype(np.uint8))
    assert main(["train", "configs/ecssd/pfa_vgg16.yaml", *common, "loss.name=ce", "--no-progress"]) == 2
    assert "set loss.name to edge_hold" in capsys.readouterr().err


@pytest.mark.slow
def test_saliency_checkpoint_exports_to_onnx(tmp_path):
    """A one-logit saliency model exported to ONNX keeps num_classes=1 (its classes list has two names) and
    evaluates to the same SOD metrics as the checkpoint."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from contextseg.export import OnnxModel, export_onnx

    root = write_sod_folder(tmp_path / "sod")
    out = tmp_path / "run"
    common = tiny_run(root, out, iters=2)
    assert main(["train", "configs/ecssd/pfa_vgg16.yaml", *common, "--no-progress"]) == 0
    export_onnx(out / "best.pt", tmp_path / "pfa.onnx", size=(32, 32))
    model = OnnxModel(tmp_path / "pfa.onnx")
    assert model.num_classes == 1 and model.classes == ["background", "salient"]
    scores = []
    for ckpt in (out / "best.pt", tmp_path / "pfa.onnx"):
        assert main(["eval", "configs/ecssd/pfa_vgg16.yaml", *common, "--checkpoint", str(ckpt),
                     "--out", str(tmp_path / "eval.json"), "--no-progress"]) == 0
        scores.append(json.loads((tmp_path / "eval.json").read_text()))
    assert scores[1]["mae"] == pytest.approx(scores[0]["mae"], abs=1e-3)
