"""contextseg: dense prediction with context and attention (HRNet + OCR and friends)."""
from .errors import ContextSegError
from .models import MultiScale, create_model, list_backbones, list_models
from .engine.backends import optimize_for_inference
from .engine.checkpoint import load_model
from .engine.predictor import Predictor
from .models.official import load_official

__version__ = "0.1.0"
__all__ = ["ContextSegError", "create_model", "list_models", "list_backbones", "load_model", "Predictor", "MultiScale",
           "load_official", "optimize_for_inference"]
