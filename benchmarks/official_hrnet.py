"""Build the official HRNet-OCR model (github.com/HRNet/HRNet-Semantic-Segmentation, branch HRNet-OCR, MIT) from a
local checkout, read at run time and never copied here, as its README says (``../shared/reference/README.md``).

    model = build_official("../shared/reference/HRNet-Semantic-Segmentation", "ocr", "small_v2", 19)
    aux, out = model.eval()(x)      # OCR in eval mode; the FCN model returns the logits alone

Needs yacs (``pip install yacs``). Used by benchmarks/cpu_speed.py for side-by-side timing on one machine.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

DEFAULT_CHECKOUT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "HRNet-Semantic-Segmentation"
OCR_YAML = "experiments/cityscapes/seg_hrnet_ocr_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml"
FCN_YAML = "experiments/cityscapes/seg_hrnet_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml"


def build_official(checkout: str | Path = DEFAULT_CHECKOUT, arch: str = "ocr", width: str = "small_v2",
                   num_classes: int = 19):
    """The official model: arch "ocr" (seg_hrnet_ocr) or "fcn" (seg_hrnet); width "small_v1", "small_v2" or "w48"."""
    import numpy as np
    import torch

    checkout = Path(checkout)
    if not (checkout / "lib" / "models").is_dir():
        raise FileNotFoundError(f"no official HRNet-Semantic-Segmentation checkout at {checkout}")
    if not hasattr(np, "int"):
        np.int = int  # the code predates numpy 1.24
    lib = str(checkout / "lib")
    if lib not in sys.path:
        sys.path.insert(0, lib)
    bn_helper = importlib.import_module("models.bn_helper")
    bn_helper.BatchNorm2d = bn_helper.BatchNorm2d_class = torch.nn.BatchNorm2d  # its SyncBN has no CPU kernels
    module = importlib.reload(importlib.import_module("models.seg_hrnet_ocr" if arch == "ocr" else "models.seg_hrnet"))
    from config import config  # yacs

    cfg = config.clone()
    cfg.defrost()
    cfg.merge_from_file(str(checkout / (OCR_YAML if arch == "ocr" else FCN_YAML)))
    if width != "w48":
        from yacs.config import CfgNode

        with open(checkout / f"{width}.yaml") as f:
            small = CfgNode.load_cfg(f)
        cfg.MODEL.EXTRA = small.MODEL.EXTRA
    cfg.DATASET.NUM_CLASSES = num_classes
    cfg.MODEL.PRETRAINED = ""
    cfg.freeze()
    return module.HighResolutionNet(cfg)
