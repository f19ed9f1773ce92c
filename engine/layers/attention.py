"""Paged attention layer: write this step's K/V into the cache, then attend through block tables."""

from __future__ import annotations

import torch

import kernels

from ..forward_batch import AttentionMetadata


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q ``[num_tokens, num_heads, head_dim]``, k/v ``[num_tokens, num_kv_heads, head_dim]`` -> like q."""
    kernels.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
    num_decode = meta.num_decode_tokens
    if num_decode == q.shape[0]:
        return kernels.paged_attention_decode(q, k_cache, v_cache, meta.decode_block_tables, meta.decode_seq_lens, scale)
    prefill = kernels.paged_attention_prefill(
        q[num_decode:], k_cache, v_cache, meta.prefill_block_tables, meta.prefill_cu_seqlens_q, meta.prefill_seq_lens, scale
    )
    if num_decode == 0:
        return prefill
    decode = kernels.paged_attention_decode(
        q[:num_decode], k_cache, v_cache, meta.decode_block_tables, meta.decode_seq_lens, scale
    )
    return torch.cat((decode, prefill))
