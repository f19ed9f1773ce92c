"""Decode attention and cache writes as plain torch ops, written for inductor to fuse on the CPU.

Traced by ``torch.compile``, indexing the cache through the block table becomes indexed loads
inside the score and output reductions, so K/V are read once, in place, and never copied into a
gathered tensor (what ``reference.paged_attention_decode`` does, and what an eager run of these
functions would do too: they are slow uncompiled). Same contract as the reference; the tests
compare the two with never-written slots poisoned.
"""

from __future__ import annotations

import torch


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Like ``reference.store_kv`` for a step that writes every token (no -1 slots): decode steps."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q ``[num_seqs, num_heads, head_dim]`` over each sequence's cached tokens -> like q.

    Scores are ``[num_seqs, num_kv_heads, group, max_len]`` (max_len = the table's width in
    tokens); positions at or past a sequence's length are masked with ``where`` before the
    softmax and before their values are summed, so nothing unwritten (NaN included) reaches the
    output. Padded table entries (-1) read block 0, then are masked.
    """
    num_seqs, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    max_len = block_tables.shape[1] * block_size
    table = block_tables.clamp(min=0).long()

    def read(cache: torch.Tensor) -> torch.Tensor:  # [S, KVH, 1, L, D]: a view of indexed loads once fused
        return cache[table].view(num_seqs, max_len, num_kv_heads, head_dim).permute(0, 2, 1, 3).unsqueeze(2)

    valid = (torch.arange(max_len, device=q.device)[None, :] < seq_lens[:, None])[:, None, None, :]
    grouped = q.view(num_seqs, num_kv_heads, group, 1, head_dim).float()
    scores = (grouped * read(k_cache).float()).sum(-1) * scale
    probs = torch.softmax(torch.where(valid, scores, float("-inf")), dim=-1)
    values = torch.where(valid[..., None], read(v_cache).float(), 0.0)
    out = (probs[..., None] * values).sum(-2)
    return out.reshape(num_seqs, num_heads, head_dim).to(q.dtype)
