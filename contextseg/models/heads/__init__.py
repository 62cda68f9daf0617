"""Heads: ``head(list of feature maps) -> {"out": logits, ["aux": logits]}``, registered in ``HEADS`` by arch name."""
from .fcn import HRNetV2Head
from .ocr import OCRHead, SpatialGather, SpatialOCR, ObjectAttentionBlock

__all__ = ["HRNetV2Head", "OCRHead", "SpatialGather", "SpatialOCR", "ObjectAttentionBlock"]
