"""Architecture (config.json ``architectures``, or ``model_type``) -> our model with its flags."""

from __future__ import annotations

from torch import nn

from engine.kernels import KernelSet
from engine.model.parallel import TensorParallel
from engine.model.quant.format import QuantFormat

from .llama import DecoderForCausalLM

# Architecture -> decoder flags; qkv_bias defaults to the config's ``attention_bias``.
_ARCHITECTURES: dict[str, dict[str, bool]] = {
    "LlamaForCausalLM": {},
    "MistralForCausalLM": {},
    "Qwen2ForCausalLM": {"qkv_bias": True},
    "Qwen3ForCausalLM": {"qk_norm": True},
}
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "qwen3": "Qwen3ForCausalLM"}


def build_model(hf_config, ops: KernelSet, quant: QuantFormat | None = None,
                tp: TensorParallel = TensorParallel()) -> nn.Module:
    names = list(getattr(hf_config, "architectures", None) or [])
    names.append(_MODEL_TYPES.get(hf_config.model_type, hf_config.model_type))  # GGUF configs list none
    for name in names:
        if name in _ARCHITECTURES:
            flags = _ARCHITECTURES[name]
            return DecoderForCausalLM(
                hf_config,
                ops,
                qkv_bias=flags.get("qkv_bias", bool(getattr(hf_config, "attention_bias", False))),
                qk_norm=flags.get("qk_norm", False),
                quant=quant,
                tp=tp,
            )
    raise ValueError(f"architecture {names[0]!r} is not supported; supported: {sorted(_ARCHITECTURES)}")
