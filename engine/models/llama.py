"""One decoder family over the paged KV cache: Llama, Mistral, Qwen2 (q/k/v bias), Qwen3 (q/k norm).

Projections are fused (q/k/v into ``qkv_proj``, gate/up into ``gate_up_proj``) so a layer
runs two matmuls where Hugging Face runs five; ``load_weights`` maps HF names onto them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

import kernels

from ..forward_batch import ForwardBatch
from ..layers.attention import paged_attention
from ..layers.rotary import build_cos_sin_cache
from ..quant.config import QuantConfig
from ..quant.linear import QuantLinear


@dataclass(frozen=True)
class DecoderSpec:
    """The architecture facts the forward pass needs, read once from the HF config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    qkv_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    max_position: int
    quant: QuantConfig | None = None

    @classmethod
    def from_hf_config(cls, hf_config, qkv_bias: bool, qk_norm: bool, quant: QuantConfig | None = None) -> "DecoderSpec":
        num_heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
        return cls(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            rms_norm_eps=hf_config.rms_norm_eps,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            max_position=hf_config.max_position_embeddings,
            quant=quant,
        )


def make_linear(spec: DecoderSpec, in_features: int, out_features: int, bias: bool, hf_prefix: str) -> nn.Module:
    """A plain linear layer, or a packed one where the checkpoint quantized it."""
    if spec.quant is not None and spec.quant.is_quantized(hf_prefix):
        return QuantLinear(in_features, out_features, bias, spec.quant)
    return nn.Linear(in_features, out_features, bias=bias)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return kernels.rms_norm(x, self.weight, self.eps, residual)


class Attention(nn.Module):
    def __init__(self, spec: DecoderSpec, prefix: str) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q_size = spec.num_heads * spec.head_dim
        self.kv_size = spec.num_kv_heads * spec.head_dim
        self.qkv_proj = make_linear(spec, spec.hidden_size, self.q_size + 2 * self.kv_size, spec.qkv_bias,
                                    f"{prefix}.q_proj")
        self.o_proj = make_linear(spec, self.q_size, spec.hidden_size, False, f"{prefix}.o_proj")
        self.q_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps) if spec.qk_norm else None
        self.k_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps) if spec.qk_norm else None
        self.scale = spec.head_dim**-0.5

    def forward(self, x, batch: ForwardBatch, cos_sin_cache, k_cache, v_cache) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = kernels.rotary_embedding(batch.positions, q, k, cos_sin_cache, True)
        out = paged_attention(q, k, v, k_cache, v_cache, batch.attention, self.scale)
        return self.o_proj(out.reshape(-1, self.q_size))


class MLP(nn.Module):
    def __init__(self, spec: DecoderSpec, prefix: str) -> None:
        super().__init__()
        self.gate_up_proj = make_linear(spec, spec.hidden_size, 2 * spec.intermediate_size, False, f"{prefix}.gate_proj")
        self.down_proj = make_linear(spec, spec.intermediate_size, spec.hidden_size, False, f"{prefix}.down_proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(kernels.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec, index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(spec, f"model.layers.{index}.self_attn")
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = MLP(spec, f"model.layers.{index}.mlp")


class DecoderModel(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec, index) for index in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)


# HF checkpoint name -> (our fused parameter, shard index among its parts)
_STACKED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class DecoderForCausalLM(nn.Module):
    def __init__(self, hf_config, qkv_bias: bool = False, qk_norm: bool = False, quant: QuantConfig | None = None) -> None:
        super().__init__()
        self.spec = spec = DecoderSpec.from_hf_config(hf_config, qkv_bias, qk_norm, quant)
        self.model = DecoderModel(spec)
        self.lm_head = None if spec.tie_word_embeddings else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self._hf_config = hf_config
        self.register_buffer("cos_sin_cache", torch.empty(0), persistent=False)

    def initialize_buffers(self, device: torch.device) -> None:
        """Compute the fp32 rotary table; called after the parameters are materialised and cast."""
        self.cos_sin_cache = build_cos_sin_cache(self._hf_config, self.spec.head_dim, self.spec.max_position).to(device)

    def forward(self, batch: ForwardBatch, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Hidden states ``[num_tokens, hidden]`` after the final norm, for every token of the step."""
        hidden = self.model.embed_tokens(batch.input_ids)
        residual = None
        for layer, (k_cache, v_cache) in zip(self.model.layers, kv_caches):
            if residual is None:
                residual = hidden
                hidden = layer.input_layernorm(hidden)
            else:
                hidden, residual = layer.input_layernorm(hidden, residual)
            hidden = layer.self_attn(hidden, batch, self.cos_sin_cache, k_cache, v_cache)
            hidden, residual = layer.post_attention_layernorm(hidden, residual)
            hidden = layer.mlp(hidden)
        hidden, _ = self.model.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return torch.nn.functional.linear(hidden, weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into our (partly fused, maybe packed) tensors; fail on anything missing or unknown."""
        modules = dict(self.named_modules())
        tensors = dict(self.named_parameters())
        tensors.update((n, b) for n, b in self.named_buffers() if n != "cos_sin_cache")
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name or (self.lm_head is None and name == "lm_head.weight"):
                continue
            target, shard = name, None
            for hf_part, (ours, index) in _STACKED.items():
                if f".{hf_part}." in name:
                    target, shard = name.replace(f".{hf_part}.", f".{ours}."), index
                    break
            if target not in tensors:
                raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
            module_name, tensor_name = target.rsplit(".", 1)
            destination = tensors[target].data
            if shard is not None:
                sizes = self._shard_sizes(target)
                start = sum(sizes[:shard])
                module = modules[module_name]
                if isinstance(module, QuantLinear):
                    destination = module.shard(tensor_name, start, sizes[shard])
                    if destination is None:  # g_idx: the fused parts share one input, so one g_idx
                        destination = tensors[target].data
                        if target in loaded and not torch.equal(destination, tensor.to(destination.dtype)):
                            raise ValueError(f"checkpoint tensor {name!r} differs from its fused siblings' g_idx")
                else:
                    destination = destination.narrow(0, start, sizes[shard])
            _copy_checked(destination, tensor, name)
            loaded.add(target)
        for module_name, module in modules.items():
            if isinstance(module, QuantLinear):
                module.finalize(has_g_idx=f"{module_name}.g_idx" in loaded)
                loaded.add(f"{module_name}.g_idx")
        missing = [n for n in tensors if n not in loaded]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")

    def _shard_sizes(self, target: str) -> list[int]:
        spec = self.spec
        if ".qkv_proj." in target:
            return [spec.num_heads * spec.head_dim] + [spec.num_kv_heads * spec.head_dim] * 2
        return [spec.intermediate_size] * 2


def _copy_checked(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
    dst.copy_(src.to(dst.dtype))
