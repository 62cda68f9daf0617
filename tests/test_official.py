"""Loading official weight files from local paths: the official HRNet-OCR / HRNetV2 segmentation layout (``model.``
prefix, ``loss.*`` entries), HRNet ImageNet classification files, mmsegmentation containers and torchvision ResNets.
The files are written here from our own models renamed to the official keys (no download)."""
import pytest
import torch

from contextseg import ContextSegError, create_model, load_official
from contextseg.config import load_config
from contextseg.engine.builders import build_model_for

SMALL = "hrnetv2_w18_small_v1"
X = torch.randn(1, 3, 64, 64)


def official_keys(model, prefix="model."):
    """Our state_dict under the official names: backbone./head. removed, the FullModel's model. prefix added."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.split(".", 1)[1] if k.startswith(("backbone.", "head.")) else k
        out[prefix + k] = v.clone()
    return out


def same_outputs(a, b):
    with torch.no_grad():
        return torch.equal(a.eval()(X)["out"], b.eval()(X)["out"])


@pytest.mark.parametrize("arch", ["ocr", "fcn"])
def test_official_segmentation_file(tmp_path, arch):
    torch.manual_seed(0)
    src = create_model(arch, backbone=SMALL, num_classes=19)
    state = official_keys(src)
    state["loss.criterion.weight"] = torch.ones(19)  # the official training wrapper saves its loss too
    assert "model.conv3x3_ocr.0.weight" in state or "model.last_layer.3.weight" in state
    torch.save(state, tmp_path / "official.pth")
    torch.manual_seed(1)
    model = load_official(tmp_path / "official.pth", arch, SMALL, 19)
    assert model.loaded_parts == "backbone + head" and same_outputs(model, src)
    torch.save({"state_dict": official_keys(src, "module.")}, tmp_path / "dp.pth")  # DataParallel in a container
    assert same_outputs(load_official(tmp_path / "dp.pth", arch, SMALL, 19), src)


def test_imagenet_file_fills_the_backbone_only(tmp_path):
    torch.manual_seed(0)
    src = create_model("fcn", backbone=SMALL, num_classes=19)
    state = {k.split(".", 1)[1]: v for k, v in src.state_dict().items() if k.startswith("backbone.")}
    state.update({"incre_modules.0.0.conv1.weight": torch.zeros(1), "classifier.weight": torch.zeros(1000, 2048),
                  "final_layer.0.weight": torch.zeros(1)})
    torch.save(state, tmp_path / "imagenet.pth")
    torch.manual_seed(1)
    fresh = create_model("ocr", backbone=SMALL, num_classes=11)
    head_before = {k: v.clone() for k, v in fresh.head.state_dict().items()}
    torch.manual_seed(1)
    model = load_official(tmp_path / "imagenet.pth", "ocr", SMALL, 11)
    assert model.loaded_parts == "backbone"
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, src.backbone.state_dict()[k]), k
    for k, v in model.head.state_dict().items():
        assert torch.equal(v, head_before[k]), k


def test_mismatches_are_named(tmp_path):
    torch.manual_seed(0)
    torch.save(official_keys(create_model("ocr", backbone=SMALL, num_classes=19)), tmp_path / "cs.pth")
    with pytest.raises(ContextSegError, match="predicts 19 classes and the model 11: pass num_classes=19, or "
                                              "backbone_only=True"):
        load_official(tmp_path / "cs.pth", "ocr", SMALL, 11)
    assert load_official(tmp_path / "cs.pth", "ocr", SMALL, 11, backbone_only=True).loaded_parts == "backbone"
    with pytest.raises(ContextSegError, match="does not fit the backbone hrnetv2_w18_small_v2.*the backbone the file"):
        load_official(tmp_path / "cs.pth", "ocr", "hrnetv2_w18_small_v2", 19)
    with pytest.raises(ContextSegError, match="has .* tensors this model has no place for"):
        load_official(tmp_path / "cs.pth", "fcn", SMALL, 19)  # OCR head keys, FCN model
    with pytest.raises(ContextSegError, match="no weights file at"):
        load_official(tmp_path / "missing.pth", "ocr", SMALL, 19)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ContextSegError, match="not a readable weights file"):
        load_official(tmp_path / "junk.pth", "ocr", SMALL, 19)


def test_mmseg_and_torchvision_backbones(tmp_path):
    torch.manual_seed(0)
    src = create_model("fcn", backbone=SMALL, num_classes=19)
    mm = {k: v for k, v in src.state_dict().items() if k.startswith("backbone.")}
    mm["decode_head.conv_seg.weight"] = torch.zeros(19, 270, 1, 1)  # mmseg's head: another layout, not read
    torch.save({"meta": {}, "state_dict": mm}, tmp_path / "mmseg.pth")
    assert load_official(tmp_path / "mmseg.pth", "ocr", SMALL, 5).loaded_parts == "backbone"
    r50 = create_model("psp", backbone="resnet50", num_classes=5)
    tv = {k.split(".", 1)[1]: v for k, v in r50.state_dict().items() if k.startswith("backbone.")}
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(tv, tmp_path / "resnet50.pth")
    model = load_official(tmp_path / "resnet50.pth", "psp", "resnet50", 5)
    assert model.loaded_parts == "backbone"
    assert torch.equal(model.backbone.layer3[2].conv2.weight, r50.backbone.layer3[2].conv2.weight)


def test_config_pretrained(tmp_path):
    torch.manual_seed(0)
    src = create_model("ocr", backbone=SMALL, num_classes=6)
    torch.save(official_keys(src), tmp_path / "w.pth")
    cfg = load_config(None, ["model.arch=ocr", f"model.backbone={SMALL}", f"model.pretrained={tmp_path / 'w.pth'}"])
    assert same_outputs(build_model_for(cfg, 6), src)
    cfg = load_config(None, ["model.arch=ocr", f"model.backbone={SMALL}", f"model.pretrained={tmp_path / 'w.pth'}",
                             "model.pretrained_parts=backbone"])
    model = build_model_for(cfg, 3)  # another number of classes: the backbone only
    assert torch.equal(model.backbone.conv1.weight, src.backbone.conv1.weight)
    cfg.model.pretrained_parts = "head"
    with pytest.raises(ContextSegError, match="pretrained_parts must be 'auto' or 'backbone'"):
        build_model_for(cfg, 6)
