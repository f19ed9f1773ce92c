"""Model resolution and weight loading."""

from .resolve import ModelSource, resolve_model
from .hf_config import load_hf_config
from .weights import iter_weights

__all__ = ["ModelSource", "iter_weights", "load_hf_config", "resolve_model"]
