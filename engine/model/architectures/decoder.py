"""The one decoder over the paged KV cache: Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 and Phi-3
as options of the same layers (spec.py says which).

Each layer owns its forward (norms and the residual stream inside it); the model loops over
layers. Projections are fused (q/k/v into ``qkv_proj``, gate/up into ``gate_up_proj``) so a layer
runs two matmuls where Hugging Face runs five; ``load_weights`` maps HF names onto them.

Under tensor parallelism (engine/model/parallel.py) each rank builds the layers at its share's size:
each linear layer and the embedding carry their ``LinearShards`` (engine/model/layers/linear.py) and
cut each checkpoint tensor to that share as ``load_weights`` hands it to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from engine.kernels import KernelSet
from engine.model.forward_batch import AttentionMetadata, DecodeMetadata
from engine.model.layers.attention import paged_attention
from engine.model.layers.embedding import VocabEmbedding
from engine.model.layers.linear import Linear, LinearShards
from engine.model.layers.norm import RMSNorm
from engine.model.layers.rotary import LOCAL_LAYERS, build_cos_sin_cache
from engine.model.parallel import Shard, TensorParallel
from engine.model.quant.format import QuantFormat
from engine.model.quant.linear import QuantLinear
from engine.model.quant.lowbit import LowBitGroups, LowBitKernels

from .spec import ArchitectureFlags, DecoderSpec


def make_linear(spec: DecoderSpec, shards: LinearShards, bias: bool, hf_prefix: str, ops: KernelSet) -> nn.Module:
    """A dense (maybe low-bit backed) linear layer of this rank's share, or a packed one where an AWQ/GPTQ
    checkpoint quantized it (loaded whole, then cut to the share, so packed words and groups stay intact)."""
    if spec.quant is not None and spec.quant.is_quantized(hf_prefix):
        return QuantLinear(shards, bias, spec.quant, ops)
    return Linear(shards, bias)


def qkv_shards(spec: DecoderSpec) -> LinearShards:
    """q/k/v split by KV heads: the rank's KV heads and the query heads that read them."""
    kv, head_dim = spec.kv_shard, spec.head_dim
    group = spec.num_heads // spec.num_kv_heads
    q_rows = Shard(kv.start * group * head_dim, kv.size * group * head_dim)
    kv_rows = Shard(kv.start * head_dim, kv.size * head_dim)
    whole_q, whole_kv = spec.num_heads * head_dim, spec.num_kv_heads * head_dim
    return LinearShards.column(spec.hidden_size, (whole_q, whole_kv, whole_kv), (q_rows, kv_rows, kv_rows))


class Attention(nn.Module):
    def __init__(self, spec: DecoderSpec, index: int, ops: KernelSet) -> None:
        super().__init__()
        prefix = f"model.layers.{index}.self_attn"
        self.ops, self.tp = ops, spec.tp
        self.num_heads, self.num_kv_heads, self.head_dim = spec.local_heads, spec.local_kv_heads, spec.head_dim
        self.q_size = self.num_heads * spec.head_dim
        self.kv_size = self.num_kv_heads * spec.head_dim
        qkv = qkv_shards(spec)
        self.qkv_proj = make_linear(spec, qkv, spec.qkv_bias, f"{prefix}.q_proj", ops)
        o_proj = LinearShards.row(qkv.part_rows[0], qkv.part_sizes[0], spec.hidden_size)
        self.o_proj = make_linear(spec, o_proj, False, f"{prefix}.o_proj", ops)
        self.q_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps, ops, spec.norm_offset) if spec.qk_norm else None
        self.k_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps, ops, spec.norm_offset) if spec.qk_norm else None
        self.scale = spec.attention_scale or spec.head_dim**-0.5
        self.window, self.softcap = spec.window(index), spec.attn_softcap
        self.local_rope = index in spec.local_rope_layers

    def forward(self, hidden: torch.Tensor, step: "Step", kv_cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        table = step.local_cos_sin_cache if self.local_rope else step.cos_sin_cache
        q, k = self.ops.rotary_embedding(step.positions, q, k, table, True)
        out = paged_attention(q, k, v, *kv_cache, step.attention, self.scale, self.ops, self.window, self.softcap)
        return self.tp.all_reduce(self.o_proj(out.reshape(-1, self.q_size)))


class MLP(nn.Module):
    def __init__(self, spec: DecoderSpec, prefix: str, ops: KernelSet) -> None:
        super().__init__()
        self.act_and_mul = ops.gelu_tanh_and_mul if spec.gemma else ops.silu_and_mul
        rows, whole = spec.tp.intermediate(spec.intermediate_size), spec.intermediate_size
        gate_up = LinearShards.column(spec.hidden_size, (whole, whole), (rows, rows))
        self.gate_up_proj = make_linear(spec, gate_up, False, f"{prefix}.gate_proj", ops)
        self.down_proj = make_linear(spec, LinearShards.row(rows, whole, spec.hidden_size), False,
                                     f"{prefix}.down_proj", ops)
        self.tp = spec.tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(self.down_proj(self.act_and_mul(self.gate_up_proj(x))))


# one layer's K and V cache and the KV cache group whose block tables address them
LayerKV = tuple[torch.Tensor, torch.Tensor, int]


@dataclass
class Step:
    """What every layer reads of the step: positions, the rotary table and the attention metadata."""

    positions: torch.Tensor  # int64 [num_tokens]
    cos_sin_cache: torch.Tensor
    attention: AttentionMetadata | DecodeMetadata
    local_cos_sin_cache: torch.Tensor | None = None  # Gemma 3's sliding-window layers' own rotary base


class DecoderLayer(nn.Module):
    """Pre-norm block; the residual stream is carried beside the hidden states so each norm adds it in.
    With ``sandwich`` norms (Gemma) the attention and MLP outputs are normalised too before they
    join the residual stream: the pre-MLP norm adds the normalised attention output to it."""

    def __init__(self, spec: DecoderSpec, index: int, ops: KernelSet) -> None:
        super().__init__()
        size, eps, offset = spec.hidden_size, spec.rms_norm_eps, spec.norm_offset
        self.sandwich = spec.gemma
        self.input_layernorm = RMSNorm(size, eps, ops, offset)
        self.self_attn = Attention(spec, index, ops)
        self.post_attention_layernorm = RMSNorm(size, eps, ops, offset)
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(size, eps, ops, offset)
            self.post_feedforward_layernorm = RMSNorm(size, eps, ops, offset)
        self.mlp = MLP(spec, f"model.layers.{index}.mlp", ops)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, step: Step,
                kv_cache: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            hidden, residual = self.input_layernorm(hidden), hidden
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, step, kv_cache)
        if not self.sandwich:
            hidden, residual = self.post_attention_layernorm(hidden, residual)
            return self.mlp(hidden), residual
        hidden, residual = self.pre_feedforward_layernorm(self.post_attention_layernorm(hidden), residual)
        return self.post_feedforward_layernorm(self.mlp(hidden)), residual


class DecoderModel(nn.Module):
    def __init__(self, spec: DecoderSpec, ops: KernelSet) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(spec.vocab_size, spec.hidden_size, spec.tp,
                                           spec.hidden_size**0.5 if spec.gemma else None)
        self.layers = nn.ModuleList(DecoderLayer(spec, index, ops) for index in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, ops, spec.norm_offset)

    def forward(self, input_ids: torch.Tensor, steps: list[Step], kv_caches: list[LayerKV]):
        """``steps``: the step as each KV cache group's layers see it (their block tables)."""
        hidden, residual = self.embed_tokens(input_ids), None
        for layer, (k_cache, v_cache, group) in zip(self.layers, kv_caches):
            hidden, residual = layer(hidden, residual, steps[group], (k_cache, v_cache))
        return self.norm(hidden, residual)[0]


# HF checkpoint name -> (our fused parameter, shard index among its parts)
_STACKED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class DecoderForCausalLM(nn.Module):
    def __init__(self, hf_config, ops: KernelSet, flags: ArchitectureFlags = ArchitectureFlags(),
                 quant: QuantFormat | None = None, tp: TensorParallel = TensorParallel()) -> None:
        """``ops``: the kernel set every layer runs, chosen once for the engine; ``tp``: this rank's share."""
        super().__init__()
        self.spec = spec = DecoderSpec.from_hf_config(hf_config, flags, quant, tp)
        self.model = DecoderModel(spec, ops)
        # tied: the lm_head shares the embedding's dense weight (set by load_weights) and gets its own low-bit kernel
        self.lm_head = Linear(self.model.embed_tokens.shards)
        self.register_buffer("cos_sin_cache", torch.empty(0), persistent=False)
        self.register_buffer("local_cos_sin_cache", torch.empty(0), persistent=False)

    def initialize_buffers(self, hf_config, device: torch.device) -> None:
        """Compute the fp32 rotary tables (the local one: the global one where no layer has its own);
        called after the parameters are materialised and cast."""
        spec = self.spec
        self.cos_sin_cache = build_cos_sin_cache(hf_config, spec.head_dim, spec.max_position).to(device)
        self.local_cos_sin_cache = self.cos_sin_cache if not spec.local_rope_layers else build_cos_sin_cache(
            hf_config, spec.head_dim, spec.max_position, LOCAL_LAYERS).to(device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attention: tuple[AttentionMetadata, ...] | tuple[DecodeMetadata, ...],
                kv_caches: list[LayerKV]) -> torch.Tensor:
        """Hidden states ``[num_tokens, hidden]`` after the final norm, for every token of the step.
        ``attention``: per KV cache group; ``kv_caches``: per layer, its cache and its group."""
        steps = [Step(positions, self.cos_sin_cache, meta, self.local_cos_sin_cache) for meta in attention]
        return self.model(input_ids, steps, kv_caches)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 ``[rows, vocab]`` (every rank gets all of them); Gemma 2 caps them with tanh."""
        logits = self.spec.tp.all_gather(self.lm_head(hidden).float())[:, : self.spec.vocab_size]
        cap = self.spec.final_softcap
        return torch.tanh(logits / cap) * cap if cap else logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor | LowBitGroups]], low_bit: LowBitKernels | None = None,
                     unpack_quantized: bool = False) -> None:
        """Load HF-named tensors into our (partly fused, maybe packed) layers, each cutting its rank's share;
        fail on anything missing or unknown.

        ``low_bit``: keep checkpoint low-bit weights in CPU kernels of that family beside their dense copy (bf16 on CPU).
        ``unpack_quantized``: turn AWQ/GPTQ packed layers into dense ones (the CPU has no packed kernel).
        """
        tied = self.spec.tie_word_embeddings
        if tied:  # after materialising: moving a module to a device or dtype unties shared parameters
            self.lm_head.weight = self.model.embed_tokens.weight
        modules = dict(self.named_modules())
        tensors = dict(self.named_parameters(remove_duplicate=False))
        tensors.update((n, b) for n, b in self.named_buffers() if not n.endswith("cos_sin_cache"))
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name or (tied and name == "lm_head.weight"):
                continue
            targets = [name, "lm_head.weight"] if tied and name == "model.embed_tokens.weight" else [name]
            for hf_name in targets:
                target, part = _fused_name(hf_name)
                if target not in tensors:
                    raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
                try:
                    self._load_one(modules, tensors, target, part, tensor)
                except ValueError as error:
                    raise ValueError(f"checkpoint tensor {name!r}: {error}") from None
                loaded.add(target)
        for module_name, module in list(modules.items()):
            if isinstance(module, QuantLinear):
                module.finalize()
                loaded.add(f"{module_name}.g_idx")
                if unpack_quantized:
                    self.set_submodule(module_name, module.to_linear(low_bit))
            elif isinstance(module, Linear):
                module.finalize(low_bit)
        missing = [n for n in tensors if n not in loaded]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")

    @staticmethod
    def _load_one(modules: dict, tensors: dict, target: str, part: int | None, tensor) -> None:
        module_name, tensor_name = target.rsplit(".", 1)
        module = modules[module_name]
        if isinstance(module, (Linear, QuantLinear)):
            module.load_checkpoint(tensor_name, tensor, part)
        elif isinstance(module, VocabEmbedding):
            module.load_checkpoint(tensor)
        else:
            if not isinstance(tensor, torch.Tensor):
                tensor = tensor.dequantize()
            if isinstance(module, RMSNorm) and module.offset:
                tensor = tensor.float() + module.offset
            _copy_checked(tensors[target].data, tensor)


def _fused_name(name: str) -> tuple[str, int | None]:
    """Our parameter name for an HF name, and its part index in a fused projection (None: a checkpoint
    tensor that is the whole fused projection, as Phi-3 stores them, or a layer of one part)."""
    for hf_part, (ours, index) in _STACKED.items():
        if f".{hf_part}." in name:
            return name.replace(f".{hf_part}.", f".{ours}."), index
    return name, None


def _copy_checked(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
    dst.copy_(src.to(dst.dtype))
