"""The rotary cos/sin table of a Hugging Face config (default, linear, dynamic-free, llama3, yarn, ...)."""

from __future__ import annotations

import torch


def rope_parameters(hf_config) -> dict:
    """transformers 5 writes ``rope_parameters``; older configs ``rope_theta`` and ``rope_scaling``."""
    params = getattr(hf_config, "rope_parameters", None)
    if params:
        return dict(params)
    params = dict(getattr(hf_config, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.pop("type", "default"))
    params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return params


def build_cos_sin_cache(hf_config, head_dim: int, max_position: int) -> torch.Tensor:
    """``[max_position, rotary_dim]`` fp32: cos in the first half, sin in the second."""
    params = rope_parameters(hf_config)
    rope_type = params.get("rope_type", "default")
    rotary_dim = int(head_dim * getattr(hf_config, "partial_rotary_factor", 1.0))
    if rope_type == "default":
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
        inv_freq = 1.0 / (params["rope_theta"] ** exponents)
        scaling = 1.0
    else:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        if rope_type not in ROPE_INIT_FUNCTIONS or rope_type == "dynamic":
            raise ValueError(f"rope type {rope_type!r} is not supported")
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu")
        inv_freq = inv_freq.double()
    positions = torch.arange(max_position, dtype=torch.float64)
    freqs = torch.outer(positions, inv_freq)
    return torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1).float()
