"""The rotary cos/sin table of a Hugging Face config (default, linear, dynamic-free, llama3, yarn, ...)."""

from __future__ import annotations

import torch

GLOBAL_LAYERS, LOCAL_LAYERS = "full_attention", "sliding_attention"  # transformers' layer types


def rope_parameters(hf_config, layer_type: str = GLOBAL_LAYERS) -> dict:
    """transformers 5 writes ``rope_parameters`` (per layer type where they differ, as Gemma 3's);
    older configs ``rope_theta`` and ``rope_scaling``, and Gemma 3's ``rope_local_base_freq``."""
    params = getattr(hf_config, "rope_parameters", None)
    if params:
        if GLOBAL_LAYERS in params or LOCAL_LAYERS in params:  # one set per layer type
            return dict(params.get(layer_type) or params[GLOBAL_LAYERS])
        return dict(params)
    if layer_type == LOCAL_LAYERS and getattr(hf_config, "rope_local_base_freq", None):
        return {"rope_type": "default", "rope_theta": hf_config.rope_local_base_freq}
    params = dict(getattr(hf_config, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.pop("type", "default"))
    params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return params


def build_cos_sin_cache(hf_config, head_dim: int, max_position: int, layer_type: str = GLOBAL_LAYERS) -> torch.Tensor:
    """``[max_position, rotary_dim]`` fp32: cos in the first half, sin in the second."""
    params = rope_parameters(hf_config, layer_type)
    rope_type = params.get("rope_type", "default")
    rotary_dim = int(head_dim * params.get("partial_rotary_factor", getattr(hf_config, "partial_rotary_factor", 1.0)))
    if rope_type == "default":
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
        inv_freq = 1.0 / (params["rope_theta"] ** exponents)
        scaling = 1.0
    else:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        if rope_type not in ROPE_INIT_FUNCTIONS or rope_type == "dynamic":
            raise ValueError(f"rope type {rope_type!r} is not supported")
        per_type = isinstance(getattr(hf_config, "rope_parameters", None), dict) and layer_type in hf_config.rope_parameters
        extra = {"layer_type": layer_type} if per_type else {}
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu", **extra)
        inv_freq = inv_freq.double()
    positions = torch.arange(max_position, dtype=torch.float64)
    freqs = torch.outer(positions, inv_freq)
    return torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1).float()
