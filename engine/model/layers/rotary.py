"""The rotary cos/sin table of a Hugging Face config (default, linear, dynamic-free, llama3, yarn, longrope, ...)."""

from __future__ import annotations

import math

import torch

GLOBAL_LAYERS, LOCAL_LAYERS = "full_attention", "sliding_attention"  # transformers' layer types
# set on the config by the engine: the longest sequence it serves (LongRoPE picks its factors by it)
SERVED_CONTEXT = "engine_max_model_len"


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
    """``[max_position, rotary_dim]`` fp32: cos in the first half, sin in the second. LongRoPE takes one
    set of factors for the whole table, long or short by the context served (``longrope_uses_long_factors``)."""
    params = rope_parameters(hf_config, layer_type)
    rope_type = params.get("rope_type", "default")
    rotary_dim = int(head_dim * params.get("partial_rotary_factor", getattr(hf_config, "partial_rotary_factor", 1.0)))
    if rope_type == "default":
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
        inv_freq = 1.0 / (params["rope_theta"] ** exponents)
        scaling = 1.0
    elif rope_type == "longrope":
        inv_freq, scaling = _longrope(hf_config, params, rotary_dim, max_position)
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


def longrope_uses_long_factors(hf_config, max_position: int, layer_type: str = GLOBAL_LAYERS) -> bool | None:
    """Whether a LongRoPE table takes the long factors (None: the config's rotary type is another).

    transformers picks per forward pass: the short factors while the sequence is within
    ``original_max_position_embeddings``, the long ones beyond. Here one table serves every
    sequence, so a token's numerics never depend on the batch it runs in: the long factors where
    the engine serves sequences longer than ``original_max_position_embeddings`` (its max_model_len,
    set on the config as ``SERVED_CONTEXT``; else the table's length, ``max_position``), the short
    ones otherwise. llama.cpp applies the same rule with its context size. So a Phi-3-mini-128k
    served at max_model_len <= 4096 computes what transformers does; served longer (by default,
    its whole 128k context), it computes what transformers does for sequences past 4096 tokens,
    also on shorter ones.
    """
    params = rope_parameters(hf_config, layer_type)
    return _uses_long(hf_config, params, max_position) if params.get("rope_type") == "longrope" else None


def _uses_long(hf_config, params: dict, max_position: int) -> bool:
    return (getattr(hf_config, SERVED_CONTEXT, None) or max_position) > _original_context(hf_config, params)


def _original_context(hf_config, params: dict) -> int:
    """The pretraining context: transformers prefers the config's own field (Phi-3's) to the rope parameters'."""
    return int(getattr(hf_config, "original_max_position_embeddings", None)
               or params.get("original_max_position_embeddings") or hf_config.max_position_embeddings)


def _longrope(hf_config, params: dict, rotary_dim: int, max_position: int) -> tuple[torch.Tensor, float]:
    """transformers' ``_compute_longrope_parameters`` with the factors ``longrope_uses_long_factors``
    picks: inverse frequencies divided by the per-dimension factors, cos and sin scaled by
    ``attention_factor`` (default ``sqrt(1 + log(factor) / log(original))``, where ``factor`` defaults
    to max_position_embeddings / original_max_position_embeddings)."""
    original = _original_context(hf_config, params)
    factor = params.get("factor")
    if factor is None:
        factor = hf_config.max_position_embeddings / original
    scaling = params.get("attention_factor")
    if scaling is None:
        scaling = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    long = _uses_long(hf_config, params, max_position)
    factors = torch.tensor(params["long_factor" if long else "short_factor"], dtype=torch.float64)
    if factors.numel() != rotary_dim // 2:
        raise ValueError(f"LongRoPE: {factors.numel()} factors for {rotary_dim // 2} rotary frequencies")
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
    return 1.0 / (factors * params["rope_theta"] ** exponents), float(scaling)
