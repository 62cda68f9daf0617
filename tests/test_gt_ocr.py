"""GT-OCR, the OCR paper's oracle (Fig. 1; openseg ``use_gt``): object regions (and relations) from the ground truth."""
import json

import torch

from contextseg import create_model
from contextseg.cli import main
from contextseg.models.heads.ocr import ObjectAttentionBlock, SpatialGather, label_onehot, oracle_regions


def test_label_onehot_downsamples_and_keeps_ignored_pixels_apart():
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]]])
    onehot = label_onehot(labels, 3, (2, 2))  # nearest: the top-left pixel of each 2x2 block
    assert onehot.shape == (1, 4, 2, 2)
    assert onehot.argmax(1).tolist() == [[[0, 1], [2, 3]]]  # 255 -> channel K = 3
    assert onehot.sum(1).eq(1).all()


def test_ground_truth_regions_are_class_means_of_the_pixels():
    feats = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(1, 2, 2, 3)  # (B, C, H, W)
    labels = torch.tensor([[[0, 0, 1], [1, 1, 2]]])
    onehot = label_onehot(labels, 3, (2, 3))
    regions = SpatialGather()(feats, torch.zeros(1, 3, 2, 3), onehot)  # (B, C, K + 1, 1)
    pixels = feats.flatten(2)[0]  # (C, HW)
    for k, idx in enumerate([[0, 1], [2, 3, 4], [5]]):
        torch.testing.assert_close(regions[0, :, k, 0], pixels[:, idx].mean(1))
    assert regions[0, :, 3, 0].abs().sum() == 0  # no ignored pixel: an empty region is zero


def test_full_oracle_gives_each_pixel_its_own_regions_value():
    block = ObjectAttentionBlock(4, 2).eval()
    x, proxy = torch.randn(1, 4, 1, 3), torch.randn(1, 4, 2, 1)
    relations = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])  # pixels 0, 2 in region 0, pixel 1 in region 1
    out = block(x, proxy, relations)
    value = block.f_up(block.f_down(proxy).reshape(1, 2, 2, 1).permute(0, 1, 2, 3))  # delta then rho per region
    torch.testing.assert_close(out[0, :, 0, 0], value[0, :, 0, 0])
    torch.testing.assert_close(out[0, :, 0, 1], value[0, :, 1, 0])
    torch.testing.assert_close(out[0, :, 0, 0], out[0, :, 0, 2])


def test_oracle_changes_only_the_forward_inside_the_block():
    torch.manual_seed(0)
    model = create_model("ocr", backbone="hrnetv2_w18_small_v1", num_classes=3, mid_channels=16, key_channels=8).eval()
    x, labels = torch.randn(1, 3, 32, 32), torch.randint(0, 3, (1, 32, 32))
    with torch.no_grad():
        plain = model(x)["out"]
        with oracle_regions(model, labels, "full"):
            oracle = model(x)["out"]
        again = model(x)["out"]
    assert not torch.allclose(plain, oracle) and torch.equal(plain, again) and model.head.oracle is None


def test_eval_reports_both_miou(tmp_path, capsys):
    common = ["model.backbone=hrnetv2_w18_small_v1", "model.kwargs={mid_channels: 32, key_channels: 16}",
              "data.kwargs={num_samples: 8, size: [64, 64]}", "data.crop_size=[64,64]", "data.batch_size=2",
              "data.num_workers=0", "train.iters=2", "train.amp=none", f"output_dir={tmp_path / 'run'}"]
    assert main(["train", "configs/synthetic_ocr.yaml", *common, "--no-progress"]) == 0
    assert main(["eval", "configs/synthetic_ocr.yaml", *common, "--checkpoint", str(tmp_path / "run" / "last.pt"),
                 "--oracle-regions", "full", "--out", str(tmp_path / "e.json"), "--no-progress"]) == 0
    assert "GT-OCR (full" in capsys.readouterr().out
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["oracle"]["mode"] == "full" and 0 <= report["oracle"]["mIoU"] <= 1 and "mIoU" in report
    assert main(["eval", "configs/synthetic_ocr.yaml", *common, "--checkpoint", str(tmp_path / "run" / "last.pt"),
                 "--oracle-regions", "--flip", "--no-progress"]) == 2  # the oracle evaluates the model as trained


def test_oracle_reaches_the_head_through_a_served_at_scale_wrapper():
    """A zoo model served at scale 0.5 (MultiScale around the OCR model): the oracle output is the plain model's
    oracle output on the half-size image, brought back to full size; a flipped pass would misalign, so it refuses."""
    import pytest
    import torch.nn.functional as F

    torch.manual_seed(0)
    plain = create_model("ocr", backbone="hrnetv2_w18_small_v1", num_classes=3).eval()
    served = create_model(**plain.init_args, multiscale={"scales": [0.5]}).eval()
    served.model.load_state_dict(plain.state_dict())
    x, labels = torch.rand(1, 3, 64, 64), torch.randint(0, 3, (1, 64, 64))
    with torch.no_grad():
        with oracle_regions(plain, labels):
            small = plain(F.interpolate(x, size=(32, 32), mode="bilinear"))["out"]
        with oracle_regions(served, labels):
            got = served(x)["out"]
        plain_out = served(x)["out"]
    want = F.interpolate(small, size=(64, 64), mode="bilinear", align_corners=plain.init_args["align_corners"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, plain_out, atol=1e-3)  # the oracle did change the output
    served.flip = True
    with pytest.raises(TypeError, match="OCR head"):
        with oracle_regions(served, labels):
            pass
