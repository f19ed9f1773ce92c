"""Paged attention layer: write this step's K/V into the cache, then attend through block tables.

A decode-only step carries ``DecodeMetadata``. Traced by ``torch.compile`` (the CPU decode graph),
it runs ``engine.kernels.cpu``: the cache write as one in-place scatter and the C++ paged decode attention,
which reads the cache in place; anywhere else it runs the engine's kernel set (Triton on CUDA, the
torch reference on the CPU) with the step's plans.
"""

from __future__ import annotations

import torch

from engine.kernels import KernelSet, cpu
from engine.model.forward_batch import AttentionMetadata, DecodeMetadata


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata | DecodeMetadata,
    scale: float,
    ops: KernelSet,
    window: int = 0,
    softcap: float = 0.0,
) -> torch.Tensor:
    """q ``[num_tokens, num_heads, head_dim]``, k/v ``[num_tokens, num_kv_heads, head_dim]`` -> like q.
    ``window`` > 0: a sliding-window layer's; ``softcap`` > 0: scores capped (see the kernel contract)."""
    if isinstance(meta, DecodeMetadata):
        if torch.compiler.is_compiling():
            cpu.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
            return cpu.paged_attention_decode(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale,
                                              window=window, softcap=softcap)
        ops.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        return ops.paged_attention_decode(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale, meta.plan,
                                          window=window, softcap=softcap)
    ops.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
    num_decode = meta.num_decode_tokens
    prefill = ops.paged_attention_prefill(
        q[num_decode:], k_cache, v_cache, meta.prefill_block_tables, meta.prefill_cu_seqlens_q, meta.prefill_seq_lens,
        scale, meta.prefill_plan, window=window, softcap=softcap,
    )
    if num_decode == 0:
        return prefill
    decode = ops.paged_attention_decode(
        q[:num_decode], k_cache, v_cache, meta.decode_block_tables, meta.decode_seq_lens, scale, meta.decode_plan,
        window=window, softcap=softcap,
    )
    return torch.cat((decode, prefill))
