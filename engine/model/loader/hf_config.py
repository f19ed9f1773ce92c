"""A model's config.json, read without transformers' model code wherever that is exact.

transformers' config classes pull in its modelling stack when first imported (activations, hub
kernels, ``torch.distributed.tensor``, sympy: over a second here, most of a warm start). For the
architectures we run with the default rotary embedding, every field the engine reads is either in
config.json or defaulted by the engine itself, so the file is read straight into a namespace.
Scaled rotary kinds need transformers' init functions, and take its config object.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from .resolve import ModelSource

DIRECT_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


class ModelConfig(SimpleNamespace):
    """config.json's fields as attributes; ``dtype`` is a torch dtype, as transformers 5 gives it."""


def load_hf_config(source: ModelSource):
    data = json.loads((source.meta_path / "config.json").read_text())
    if data.get("model_type") in DIRECT_MODEL_TYPES and _rope_type(data) == "default":
        dtype = data.get("dtype") or data.get("torch_dtype")
        return ModelConfig(**{**data, "dtype": getattr(torch, dtype) if isinstance(dtype, str) else None})
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.meta_path)


def _rope_type(data: dict) -> str:
    params = data.get("rope_parameters") or data.get("rope_scaling") or {}
    return params.get("rope_type", params.get("type", "default"))
