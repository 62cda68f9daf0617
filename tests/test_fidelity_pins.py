"""Small reference values that docs/fidelity.md names and no other test asserts."""
import importlib.util
import sys
from pathlib import Path

import torch

from contextseg import create_model
from contextseg.config import load_config

ROOT = Path(__file__).resolve().parents[1]
HR = "hrnetv2_w18_small_v1"


def test_aspp_dropout_is_the_official_keep_0_9():
    head = create_model("aspp", backbone=HR, num_classes=5).head
    assert isinstance(head.dropout, torch.nn.Dropout2d) and head.dropout.p == 0.1


def test_aspp_l_classifiers_start_from_n0_001():
    torch.manual_seed(0)
    head = create_model("aspp_l", backbone=HR, num_classes=64).head.requires_grad_(False)
    weights = torch.cat([m.weight.flatten() for m in head.modules() if isinstance(m, torch.nn.Conv2d)])
    biases = torch.cat([m.bias.flatten() for m in head.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(float(weights.std()) - 0.01) < 5e-4 and float(biases.abs().max()) == 0.0


def test_ssnet_sam_starts_from_the_official_n0_002():
    torch.manual_seed(0)
    head = create_model("ssnet", backbone=HR, num_classes=20).head.requires_grad_(False)
    fc = [m for name, m in head.named_modules() if isinstance(m, torch.nn.Conv2d) and name.endswith("fc")]
    assert fc and all(abs(float(m.weight.std()) - 0.02) < 2e-3 for m in fc)


def test_danet_suite_weights_its_three_outputs_equally():
    spec = importlib.util.spec_from_file_location("benchmarks_compare_pins", ROOT / "benchmarks" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = compare
    spec.loader.exec_module(compare)
    base = load_config(ROOT / "configs" / "camvid" / "ocr_hrnetv2_w18s_v2.yaml")
    danet = next(e for e in compare.suite_experiments("heads", base) if e.name == "danet")
    weights = next(o for o in danet.overrides if o.startswith("loss.weights="))
    assert "pam: 1.0" in weights and "cam: 1.0" in weights and "out: 1.0" in weights


def test_pfa_edge_loss_defaults_are_the_official_edge_hold_loss():
    from contextseg.losses.saliency import EdgePreservingLoss

    loss = EdgePreservingLoss()
    assert (loss.saliency_weight, loss.edge_weight, loss.pos_weight) == (0.7, 0.3, 1.12)


def test_ocr_aux_weight_is_the_official_0_4():
    from contextseg.config import Config
    from contextseg.losses import build_loss

    assert Config().loss.weights is None  # "the task's default": for segmentation, below
    # official LOSS.BALANCE_WEIGHTS [0.4, 1]
    assert build_loss("ce").weights == {"out": 1.0, "aux": 0.4}
