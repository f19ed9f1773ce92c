"""Model resolution and weight loading."""

from .resolve import ModelSource, resolve_model
from .weights import iter_weights, load_hf_config

__all__ = ["ModelSource", "iter_weights", "load_hf_config", "resolve_model"]
