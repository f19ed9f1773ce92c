"""Architecture (config.json ``architectures``, or ``model_type``) -> the decoder with its flags."""

from __future__ import annotations

from torch import nn

from engine.kernels import KernelSet
from engine.model.parallel import TensorParallel
from engine.model.quant.format import QuantFormat

from .decoder import DecoderForCausalLM
from .spec import ArchitectureFlags

_ARCHITECTURES: dict[str, ArchitectureFlags] = {
    "LlamaForCausalLM": ArchitectureFlags(),
    "MistralForCausalLM": ArchitectureFlags(windows_from_config=True),
    "Qwen2ForCausalLM": ArchitectureFlags(qkv_bias=True),
    "Qwen3ForCausalLM": ArchitectureFlags(qk_norm=True),
    "Gemma2ForCausalLM": ArchitectureFlags(gemma=True),
    "Gemma3ForCausalLM": ArchitectureFlags(gemma=True, qk_norm=True, local_rope=True),
    "Phi3ForCausalLM": ArchitectureFlags(windows_from_config=True),
}
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
                "phi3": "Phi3ForCausalLM"}


def build_model(hf_config, ops: KernelSet, quant: QuantFormat | None = None,
                tp: TensorParallel = TensorParallel()) -> nn.Module:
    names = list(getattr(hf_config, "architectures", None) or [])
    names.append(_MODEL_TYPES.get(hf_config.model_type, hf_config.model_type))  # GGUF configs list none
    for name in names:
        if name in _ARCHITECTURES:
            return DecoderForCausalLM(hf_config, ops, _ARCHITECTURES[name], quant=quant, tp=tp)
    raise ValueError(f"architecture {names[0]!r} is not supported; supported: {sorted(_ARCHITECTURES)}")
