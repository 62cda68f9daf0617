"""Losses, by task. Importing this package registers the pixel losses in ``registry.LOSSES`` (the decorators in
pixel.py and saliency.py); the task-specific objectives are built by their tasks.

    pixel.py     "ce", "ohem", "focal" on (B, K, h, w) logits and (B, H, W) labels; median-frequency weights
    outputs.py   OutputsLoss (weighted sum over named outputs), build_loss, build_loss_for
    saliency.py  "edge_hold" (PFA, Zhao & Wu CVPR 2019) on one-logit saliency maps
    saol.py      the SAOL objective (Kim et al. CVPR 2020) for classifiers
    ssnet.py     the SSNet objective (Zeng et al. ICCV 2019) for weak supervision + saliency
"""
from . import pixel, saliency  # noqa: F401  (explicit registration: "ce", "ohem", "focal", "edge_hold")
from .outputs import SEGMENTATION_WEIGHTS, OutputsLoss, build_loss, build_loss_for, resolve_loss_kwargs
from .pixel import CrossEntropy, FocalLoss, OhemCrossEntropy, median_frequency_weights, resize_to
from .saliency import EdgePreservingLoss
from .saol import SAOLLoss, WithSourceLogits, build_classification_loss
from .ssnet import SSNetLoss

__all__ = ["SEGMENTATION_WEIGHTS", "OutputsLoss", "build_loss", "build_loss_for", "resolve_loss_kwargs",
           "CrossEntropy", "FocalLoss", "OhemCrossEntropy", "median_frequency_weights", "resize_to",
           "EdgePreservingLoss", "SAOLLoss", "WithSourceLogits", "build_classification_loss", "SSNetLoss"]
