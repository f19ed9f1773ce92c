"""The one decoder over the paged KV cache: Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 and Phi-3
as options of the same layers (spec.py says which).

Each layer owns its forward (norms and the residual stream inside it); the model loops over
layers. Projections are fused (q/k/v into ``qkv_proj``, gate/up into ``gate_up_proj``) so a layer
runs two matmuls where Hugging Face runs five; ``load_weights`` maps HF names onto them.

Under tensor parallelism (engine/model/parallel.py) each rank builds the layers at its share's size and
``load_weights`` cuts each checkpoint tensor to that share as it arrives.
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
from engine.model.layers.linear import Linear
from engine.model.layers.norm import RMSNorm
from engine.model.layers.rotary import LOCAL_LAYERS, build_cos_sin_cache
from engine.model.parallel import Shard, TensorParallel
from engine.model.quant.format import QuantFormat
from engine.model.quant.linear import QuantLinear
from engine.model.quant.lowbit import LowBitGroups, take_groups

from .spec import ArchitectureFlags, DecoderSpec


def make_linear(spec: DecoderSpec, in_features: int, output_sizes: tuple[int, ...], bias: bool,
                hf_prefix: str, ops: KernelSet, whole: tuple[int, tuple[int, ...]]) -> nn.Module:
    """A dense (maybe low-bit backed) linear layer of this rank's sizes, or a packed one where an AWQ/GPTQ
    checkpoint quantized it: built ``whole`` (inputs, output sizes of the unsharded layer), loaded whole,
    then cut to the rank's share (``QuantLinear.keep_share``), so packed words and groups stay intact."""
    if spec.quant is not None and spec.quant.is_quantized(hf_prefix):
        return QuantLinear(whole[0], sum(whole[1]), bias, spec.quant, ops)
    return Linear(in_features, sum(output_sizes), bias, output_sizes)


class Attention(nn.Module):
    def __init__(self, spec: DecoderSpec, index: int, ops: KernelSet) -> None:
        super().__init__()
        prefix = f"model.layers.{index}.self_attn"
        self.ops, self.tp = ops, spec.tp
        self.num_heads, self.num_kv_heads, self.head_dim = spec.local_heads, spec.local_kv_heads, spec.head_dim
        self.q_size = self.num_heads * spec.head_dim
        self.kv_size = self.num_kv_heads * spec.head_dim
        whole_q, whole_kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        self.qkv_proj = make_linear(spec, spec.hidden_size, (self.q_size, self.kv_size, self.kv_size), spec.qkv_bias,
                                    f"{prefix}.q_proj", ops, (spec.hidden_size, (whole_q, whole_kv, whole_kv)))
        self.o_proj = make_linear(spec, self.q_size, (spec.hidden_size,), False, f"{prefix}.o_proj", ops,
                                  (whole_q, (spec.hidden_size,)))
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
        intermediate, whole = spec.tp.intermediate(spec.intermediate_size).size, spec.intermediate_size
        self.gate_up_proj = make_linear(spec, spec.hidden_size, (intermediate,) * 2, False, f"{prefix}.gate_proj", ops,
                                        (spec.hidden_size, (whole, whole)))
        self.down_proj = make_linear(spec, intermediate, (spec.hidden_size,), False, f"{prefix}.down_proj", ops,
                                     (whole, (spec.hidden_size,)))
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


# checkpoint projections stored fused (Phi-3) -> their parts' names, in order
_FUSED_IN_CHECKPOINT = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
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
        self.lm_head = Linear(spec.hidden_size, tp.vocab(spec.vocab_size).size)
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

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor | LowBitGroups]], low_bit: bool = False,
                     unpack_quantized: bool = False) -> None:
        """Copy HF-named tensors into our (partly fused, maybe packed) tensors; fail on anything missing or unknown.

        ``low_bit``: keep checkpoint low-bit weights in CPU kernels beside their dense copy (bf16 on CPU).
        ``unpack_quantized``: turn AWQ/GPTQ packed layers into dense ones (the CPU has no packed kernel).
        """
        tied = self.spec.tie_word_embeddings
        if tied:  # after materialising: moving a module to a device or dtype unties shared parameters
            self.lm_head.weight = self.model.embed_tokens.weight
        modules = dict(self.named_modules())
        tensors = dict(self.named_parameters(remove_duplicate=False))
        tensors.update((n, b) for n, b in self.named_buffers() if not n.endswith("cos_sin_cache"))
        loaded: set[str] = set()
        for name, tensor in _split_fused(self.spec, weights):
            if "rotary_emb.inv_freq" in name or (tied and name == "lm_head.weight"):
                continue
            targets = [name, "lm_head.weight"] if tied and name == "model.embed_tokens.weight" else [name]
            tensor = _rank_share(self.spec, name, tensor)
            for hf_name in targets:
                target, shard = _fused_name(hf_name)
                if target not in tensors:
                    raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
                self._load_one(modules, tensors, target, shard, tensor, name, target in loaded)
                loaded.add(target)
        for module_name, module in list(modules.items()):
            if isinstance(module, QuantLinear):
                module.finalize(has_g_idx=f"{module_name}.g_idx" in loaded)
                loaded.add(f"{module_name}.g_idx")
                if self.spec.tp.enabled:
                    module.keep_share(*_packed_share(self.spec, module_name))
                if unpack_quantized:
                    self.set_submodule(module_name, module.to_linear(low_bit))
            elif isinstance(module, Linear):
                module.finalize(low_bit)
        missing = [n for n in tensors if n not in loaded]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")

    def _load_one(self, modules: dict, tensors: dict, target: str, shard: int | None, tensor, name: str,
                  seen: bool) -> None:
        module_name, tensor_name = target.rsplit(".", 1)
        module = modules[module_name]
        if isinstance(module, Linear):
            module.load(tensor_name, tensor, shard or 0)
            return
        if not isinstance(tensor, torch.Tensor):
            tensor = tensor.dequantize()
        if isinstance(module, RMSNorm) and module.offset:
            tensor = tensor.float() + module.offset
        destination = tensors[target].data
        if isinstance(module, QuantLinear) and shard is not None:
            sizes = _shard_sizes(self.spec, target)
            destination = module.shard(tensor_name, sum(sizes[:shard]), sizes[shard])
            if destination is None:  # g_idx: the fused parts share one input, so one g_idx
                destination = tensors[target].data
                if seen and not torch.equal(destination, tensor.to(destination.dtype)):
                    raise ValueError(f"checkpoint tensor {name!r} differs from its fused siblings' g_idx")
        _copy_checked(destination, tensor, name)


def _rank_share(spec: DecoderSpec, name: str, tensor: torch.Tensor | LowBitGroups):
    """The part of a checkpoint tensor this tensor-parallel rank holds (all of it without tensor parallelism):
    output rows of the column-parallel layers, input columns of the row-parallel ones, vocabulary rows."""
    tp = spec.tp
    packed = spec.quant is not None and "_proj." in name and spec.quant.is_quantized(name.rsplit(".", 1)[0])
    if not tp.enabled or packed or not name.endswith((".weight", ".bias")):  # a packed layer is loaded whole
        return tensor
    kv, head_dim = spec.kv_shard, spec.head_dim
    group = spec.num_heads // spec.num_kv_heads
    if ".q_proj." in name:
        return _take(tensor, 0, Shard(kv.start * group * head_dim, kv.size * group * head_dim))
    if ".k_proj." in name or ".v_proj." in name:
        return _take(tensor, 0, Shard(kv.start * head_dim, kv.size * head_dim))
    if ".o_proj." in name:
        return _take(tensor, 1, Shard(kv.start * group * head_dim, kv.size * group * head_dim))
    if ".gate_proj." in name or ".up_proj." in name:
        return _take(tensor, 0, tp.intermediate(spec.intermediate_size))
    if ".down_proj." in name:
        return _take(tensor, 1, tp.intermediate(spec.intermediate_size))
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = tp.vocab(spec.vocab_size)
        if not isinstance(tensor, torch.Tensor):
            tensor = tensor.dequantize()
        part = tensor[rows.start : rows.start + rows.size]
        return torch.cat((part, part.new_zeros(rows.size - part.shape[0], *part.shape[1:])))  # the padding rows
    return tensor


def _split_fused(spec: DecoderSpec, weights: Iterable[tuple[str, torch.Tensor | LowBitGroups]]):
    """The checkpoint's tensors, a fused q/k/v or gate/up projection cut into its parts' names, so each
    part is sharded and loaded as the unfused checkpoints' are."""
    for name, tensor in weights:
        fused = next((f for f in _FUSED_IN_CHECKPOINT if f".{f}." in name), None)
        if fused is None:
            yield name, tensor
            continue
        if spec.quant is not None and spec.quant.is_quantized(name.rsplit(".", 1)[0]):
            raise ValueError(f"checkpoint tensor {name!r}: fused packed projections are not supported")
        sizes = _shard_sizes(spec, f".{fused}.")
        start = 0
        for part, size in zip(_FUSED_IN_CHECKPOINT[fused], sizes):
            rows = Shard(start, size)
            yield name.replace(f".{fused}.", f".{part}."), _take(tensor, 0, rows)
            start += size


def _take(tensor: torch.Tensor | LowBitGroups, dim: int, shard: Shard):
    if isinstance(tensor, torch.Tensor):
        return shard.take(tensor, dim) if tensor.dim() > dim else tensor  # a bias has no input dimension
    return take_groups(tensor, dim, shard.start, shard.size)


def _fused_name(name: str) -> tuple[str, int | None]:
    """Our parameter name for an HF name, and its part index in a fused projection."""
    for hf_part, (ours, index) in _STACKED.items():
        if f".{hf_part}." in name:
            return name.replace(f".{hf_part}.", f".{ours}."), index
    return name, None


def _shard_sizes(spec: DecoderSpec, target: str) -> list[int]:
    """The output sizes of a fused layer's parts, whole (before any tensor-parallel share)."""
    if ".qkv_proj." in target:
        return [spec.num_heads * spec.head_dim] + [spec.num_kv_heads * spec.head_dim] * 2
    return [spec.intermediate_size] * 2


def _packed_share(spec: DecoderSpec, module_name: str) -> tuple[list[Shard] | None, Shard | None]:
    """A rank's part of a whole packed layer: output ranges (column-parallel) or inputs (row-parallel)."""
    kv, head_dim, tp = spec.kv_shard, spec.head_dim, spec.tp
    group = spec.num_heads // spec.num_kv_heads
    whole_q, whole_kv = spec.num_heads * head_dim, spec.num_kv_heads * head_dim
    q = Shard(kv.start * group * head_dim, kv.size * group * head_dim)
    inter = tp.intermediate(spec.intermediate_size)
    if module_name.endswith("qkv_proj"):
        k = Shard(whole_q + kv.start * head_dim, kv.size * head_dim)
        return [q, k, Shard(k.start + whole_kv, k.size)], None
    if module_name.endswith("gate_up_proj"):
        return [inter, Shard(spec.intermediate_size + inter.start, inter.size)], None
    return None, q if module_name.endswith("o_proj") else inter


def _copy_checked(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
    dst.copy_(src.to(dst.dtype))
