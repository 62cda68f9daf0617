"""Heads: ``head(list of feature maps) -> {"out": logits, ["aux": logits]}``, registered in ``HEADS`` by arch name."""
from .aspp import ASPPHead
from .aspp_l import ASPPLHead
from .aux import AuxFCNHead
from .common import FeatureAdapter
from .danet import DANetHead
from .fcn import HRNetV2Head
from .fcn8s import FCN8sHead
from .largefov import LargeFOVHead
from .nonlocal_head import NonLocalHead
from .ocr import OCRHead, SpatialGather, SpatialOCR, ObjectAttentionBlock
from .psp import PSPHead
from .saliency import CPFE, PFAHead
from .saol import GAPFCHead, SAOLHead
from .segtr import SegTransformerHead, segtr_from_ocr
from .ssnet import SaliencyAggregation, SSNetHead

__all__ = [
    "HRNetV2Head", "OCRHead", "SpatialGather", "SpatialOCR", "ObjectAttentionBlock",
    "FeatureAdapter", "FCN8sHead", "PSPHead", "ASPPHead", "ASPPLHead", "LargeFOVHead", "NonLocalHead",
    "DANetHead", "AuxFCNHead", "PFAHead", "CPFE", "SAOLHead", "GAPFCHead", "SSNetHead",
    "SaliencyAggregation", "SegTransformerHead", "segtr_from_ocr",
]
