"""Output parity with the official HRNet-OCR code, and the align_corners model setting that makes it possible.

The fixtures (``../shared/fixtures/official_hrnet``, see its README) hold state dicts saved by the official trainer
(random weights and BatchNorm statistics) and the official model's eval-mode outputs on a fixed input."""
from pathlib import Path

import pytest
import torch

from contextseg import create_model, load_official
from contextseg.engine.checkpoint import load_model
from contextseg.losses import OhemCrossEntropy, build_loss
from contextseg.models import align_corners_of, set_align_corners

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official_hrnet"


def relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="needs ../shared/fixtures/official_hrnet")
@pytest.mark.parametrize("arch", ["fcn", "ocr"])
def test_load_official_reproduces_the_official_outputs(arch):
    io = torch.load(FIXTURES / f"{arch}_hrnetv2_w18_small_v1_io.pt", weights_only=True)
    assert io["align_corners"] is True and io["model"] == (arch, "hrnetv2_w18_small_v1")
    model = load_official(FIXTURES / f"{arch}_hrnetv2_w18_small_v1_state.pt", arch, "hrnetv2_w18_small_v1",
                          num_classes=io["num_classes"])
    assert model.align_corners is True and not model.training
    with torch.no_grad():
        out = model(io["input"], return_aux=True)
    assert out["out"].shape == io["out"].shape == (2, 19, 25, 33)
    assert relative_difference(out["out"], io["out"]) <= 1e-5
    if arch == "ocr":
        assert relative_difference(out["aux"], io["aux"]) <= 1e-5
    # the same weights with the other alignment are another model: this is what the setting is for
    set_align_corners(model, False)
    with torch.no_grad():
        assert relative_difference(model(io["input"])["out"], io["out"]) > 0.05


def test_align_corners_reaches_every_resize_and_is_recorded():
    model = create_model("ocr", backbone="hrnetv2_w18_small_v1", num_classes=3, align_corners=False)
    resizing = [m for m in model.modules() if hasattr(m, "align_corners")]
    assert len(resizing) > 3 and all(m.align_corners is False for m in resizing)
    assert model.init_args["align_corners"] is False and align_corners_of(model) is False
    assert create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=3).align_corners is True
    x = torch.randn(1, 3, 45, 61)
    set_align_corners(model.eval(), True)
    with torch.no_grad():
        a = model(x)["out"]
        b = create_model(**{**model.init_args, "align_corners": True}).eval()
        b.load_state_dict(model.state_dict())
        torch.testing.assert_close(a, b(x)["out"])


def test_checkpoints_keep_the_setting_and_old_ones_load_as_trained(tmp_path):
    model = create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=3, align_corners=False)
    torch.save({"model": model.state_dict(), "model_args": model.init_args}, tmp_path / "new.pt")
    assert load_model(tmp_path / "new.pt").align_corners is False
    legacy = {k: v for k, v in model.init_args.items() if k != "align_corners"}  # written before the setting
    torch.save({"model": model.state_dict(), "model_args": legacy}, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").align_corners is False


def test_eval_mode_returns_aux_on_request():
    model = create_model("ocr", backbone="hrnetv2_w18_small_v1", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert set(model(x)) == {"out"}
        assert set(model(x, return_aux=True)) == {"out", "aux"}
    fcn = create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=3, aux={"in_index": 1}).eval()
    with torch.no_grad():
        assert set(fcn(x, return_aux=True)) == {"out", "aux"}


def test_ohem_applies_to_the_final_output_only():
    torch.manual_seed(0)
    loss = build_loss("ohem", {"out": 1.0, "aux": 0.4}, thresh=0.3, min_kept=10)
    out, aux = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    labels = torch.randint(0, 4, (2, 16, 16))
    total, parts = loss({"out": out, "aux": aux}, labels)
    ce = build_loss("ce", {"aux": 1.0})
    ohem = OhemCrossEntropy(thresh=0.3, min_kept=10)
    torch.testing.assert_close(parts["aux"], ce({"aux": aux}, labels)[0])
    torch.testing.assert_close(parts["out"], ohem(out, labels))
    torch.testing.assert_close(total, parts["out"] + 0.4 * parts["aux"])
    assert not torch.allclose(parts["aux"], ohem(aux, labels))  # OHEM on aux would be another loss


def test_ohem_defaults_are_the_official_configuration():
    criterion = build_loss("ohem").criterion
    assert (criterion.thresh, criterion.min_kept) == (0.9, 131072)


def test_hrnet_init_official_is_n0_0001():
    torch.manual_seed(0)
    body = create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=3, init="official").backbone.requires_grad_(False)
    weights = torch.cat([m.weight.flatten() for m in body.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(float(weights.std()) - 0.001) < 5e-5 and abs(float(weights.mean())) < 5e-5
    torch.manual_seed(0)
    he = create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=3).backbone
    assert float(he.conv1.weight.detach().std()) > 0.01  # He: sqrt(2 / fan_out)
    with pytest.raises(Exception, match="unknown HRNet init"):
        create_model("fcn", backbone="hrnetv2_w18_small_v1", num_classes=3, init="xavier")


def test_align_corners_from_a_config():
    from contextseg.config import load_config
    from contextseg.engine.builders import build_model_for

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "synthetic_ocr.yaml",
                      ["model.kwargs={mid_channels: 32, key_channels: 16, align_corners: false}"])
    model = build_model_for(cfg, 6)
    assert model.align_corners is False and model.backbone.stage2[0].align_corners is False
