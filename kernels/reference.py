"""Torch reference implementations of the kernel contract.

These are the CPU path and the oracle for every Triton kernel test. Each op is vectorised
over the batch (no Python loop per token or per sequence); padded block-table entries (-1)
and slots past a sequence's length are masked, never read into a result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write k, v ``[num_tokens, num_kv_heads, head_dim]`` into the paged caches at ``slot_mapping`` (-1 skipped)."""
    num_blocks, block_size = k_cache.shape[:2]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(num_blocks * block_size, *k_cache.shape[2:])[slots] = k[keep]
    v_cache.view(num_blocks * block_size, *v_cache.shape[2:])[slots] = v[keep]


def _slot_index(block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int, device) -> torch.Tensor:
    """Cache slot of every (sequence, position < max(seq_lens)): ``[num_seqs, max_len]`` int64.

    Positions past a sequence's length point at its position 0, a slot that is always written:
    the attention mask drops them, and reading written memory means no NaN from never-written
    slots can reach the output (0 * NaN), without a pass to zero them.
    """
    max_len = int(seq_lens.max())
    positions = torch.arange(max_len, device=device)
    table = block_tables[:, : -(-max_len // block_size)].to(device).long()
    slots = table[:, positions // block_size] * block_size + positions % block_size
    valid = positions[None, :] < seq_lens[:, None].to(device)
    return torch.where(valid, slots, table[:, :1] * block_size)


def _gather_kv(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The cached K or V at ``slots [S, L]``: ``[S, num_kv_heads, L, head_dim]`` (a strided view)."""
    return cache.flatten(0, 1)[slots].transpose(1, 2)


def _attend(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float, softcap: float = 0.0
) -> torch.Tensor:
    """q ``[S, H, Q, D]`` over keys/values ``[S, KVH, L, D]`` with a boolean mask (True = attend) of
    ``[S, 1, G * Q, L]`` rows (each query row repeated for the G heads of a group) or ``[S, 1, 1, L]``.

    Grouped-query heads share their K/V without copies: the ``H // KVH`` query heads of a KV head
    are stacked into its query rows (head h reads KV head h // group, as in repeat_interleave).
    ``softcap`` > 0 bounds the scores to ``softcap * tanh(score / softcap)`` before the softmax (Gemma 2).
    """
    num_seqs, num_heads, q_len, head_dim = q.shape
    num_kv_heads = keys.shape[1]
    group = num_heads // num_kv_heads
    grouped = q.reshape(num_seqs, num_kv_heads, group * q_len, head_dim)
    if softcap > 0:
        scores = (grouped.float() @ keys.float().transpose(-1, -2)) * scale
        scores = (torch.tanh(scores / softcap) * softcap).masked_fill(~mask, float("-inf"))
        out = (torch.softmax(scores, dim=-1) @ values.float()).to(q.dtype)
    else:
        out = F.scaled_dot_product_attention(grouped, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask, scale=scale)
    return out.reshape(num_seqs, num_heads, q_len, head_dim)


@dataclass(frozen=True)
class DecodeLayout:
    """What every layer of a decode step derives alike from the metadata: build it once per step."""

    slots: torch.Tensor  # int64 [num_seqs, max_len]: the cache slot of each position
    mask: torch.Tensor  # bool [num_seqs, 1, 1, max_len]: positions inside the sequence


def plan_decode(block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int, num_heads: int,
                num_kv_heads: int) -> DecodeLayout:
    """The layout ``paged_attention_decode`` takes as ``plan`` (the head counts: every set's planners take them)."""
    slots = _slot_index(block_tables, seq_lens, block_size, seq_lens.device)
    positions = torch.arange(slots.shape[1], device=seq_lens.device)
    return DecodeLayout(slots, (positions[None, :] < seq_lens[:, None])[:, None, None, :])


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    plan: DecodeLayout | None = None,
    window: int = 0,
    softcap: float = 0.0,
) -> torch.Tensor:
    """One query token per sequence (its last position) over that sequence's cached tokens.

    q ``[num_seqs, num_heads, head_dim]`` -> ``[num_seqs, num_heads, head_dim]``. ``plan``: the step's
    ``plan_decode``, which a model shares across its layers (~10 small ops a layer saved at batch 1).
    ``window`` > 0: the query sees only the last ``window`` positions, its own included (sliding-window
    layers: key j is seen from query i where ``i - j < window``, as in transformers). ``softcap``: see ``_attend``.
    """
    if plan is None:
        plan = plan_decode(block_tables, seq_lens.to(q.device), k_cache.shape[1], q.shape[1], k_cache.shape[2])
    keys, values = _gather_kv(k_cache, plan.slots), _gather_kv(v_cache, plan.slots)
    mask = plan.mask
    if window > 0:
        positions = torch.arange(mask.shape[-1], device=mask.device)
        mask = mask & (positions >= seq_lens.to(mask.device)[:, None] - window)[:, None, None, :]
    out = _attend(q.unsqueeze(2), keys, values, mask, scale, softcap)
    return out.squeeze(2)


@dataclass(frozen=True)
class PrefillLayout:
    """Where each flat query goes in the padded ``[num_seqs, max_q]`` grid, the K/V slots, each query
    row's absolute position, and the causal mask (rows repeated for the query heads that share a KV
    head, as ``_attend`` stacks them), or None when no sequence has a cached prefix (then SDPA's
    ``is_causal`` needs none)."""

    token_seq: torch.Tensor
    token_row: torch.Tensor
    max_q: int
    slots: torch.Tensor
    q_pos: torch.Tensor  # int64 [num_seqs, max_q]
    mask: torch.Tensor | None
    group: int

    def causal_mask(self, seq_lens: torch.Tensor) -> torch.Tensor:
        """``[S, 1, G * max_q, L]``: key j seen from query row r where j <= q_pos[r] and j < seq_len."""
        if self.mask is not None:
            return self.mask
        return _causal_mask(self.q_pos, seq_lens, self.slots.shape[1], self.group)


def _causal_mask(q_pos: torch.Tensor, seq_lens: torch.Tensor, max_len: int, group: int) -> torch.Tensor:
    k_pos = torch.arange(max_len, device=q_pos.device)
    mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < seq_lens[:, None, None])
    return mask[:, None].repeat(1, 1, group, 1)


def plan_prefill(block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, block_size: int,
                 num_heads: int, num_kv_heads: int) -> PrefillLayout:
    """The layout ``paged_attention_prefill`` takes as ``plan``."""
    device = seq_lens.device
    num_seqs = seq_lens.shape[0]
    q_lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
    max_q = int(q_lens.max())
    num_tokens = int(cu_seqlens_q[-1])
    token_seq = torch.repeat_interleave(torch.arange(num_seqs, device=device), q_lens)
    token_row = torch.arange(num_tokens, device=device) - cu_seqlens_q[:-1][token_seq]
    slots = _slot_index(block_tables, seq_lens, block_size, device)
    # Query row r of sequence i is at absolute position seq_len_i - q_len_i + r.
    q_pos = (seq_lens - q_lens)[:, None].long() + torch.arange(max_q, device=device)[None, :]
    group = num_heads // num_kv_heads
    whole = torch.equal(q_lens, seq_lens.to(q_lens.dtype))
    mask = None if whole else _causal_mask(q_pos, seq_lens, slots.shape[1], group)
    return PrefillLayout(token_seq, token_row, max_q, slots, q_pos, mask, group)


def paged_attention_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    plan: PrefillLayout | None = None,
    window: int = 0,
    softcap: float = 0.0,
) -> torch.Tensor:
    """Causal attention for a ragged batch of query chunks, through the block table.

    q ``[num_tokens, num_heads, head_dim]``; the queries of sequence i are
    ``q[cu_seqlens_q[i]:cu_seqlens_q[i+1]]`` and sit at the last ``q_len_i`` positions of
    its ``seq_lens[i]`` cached tokens, so a cached prefix or an earlier chunk is attended to.
    When no sequence has a cached prefix (every query chunk is the whole sequence), the padded
    grid is plainly causal: SDPA's ``is_causal`` needs no mask and skips the upper triangle
    (a valid query row only sees keys at or before it, never a shorter sequence's padding).
    ``plan``: the step's ``plan_prefill``, shared across a model's layers. ``window``, ``softcap``:
    as in ``paged_attention_decode``.
    """
    if plan is None:
        plan = plan_prefill(block_tables, cu_seqlens_q.to(q.device), seq_lens.to(q.device), k_cache.shape[1],
                            q.shape[1], k_cache.shape[2])
    # Scatter the flat queries into a padded [num_seqs, max_q] grid.
    padded = q.new_zeros(seq_lens.shape[0], plan.max_q, *q.shape[1:])
    padded[plan.token_seq, plan.token_row] = q
    keys, values = _gather_kv(k_cache, plan.slots), _gather_kv(v_cache, plan.slots)
    windowed = window > 0 and plan.slots.shape[1] > window
    if plan.mask is None and not windowed and softcap <= 0:
        out = F.scaled_dot_product_attention(padded.transpose(1, 2), keys.to(q.dtype), values.to(q.dtype),
                                             is_causal=True, scale=scale, enable_gqa=True)
    else:
        mask = plan.causal_mask(seq_lens.to(q.device))
        if windowed:
            k_pos = torch.arange(plan.slots.shape[1], device=q.device)
            inside = k_pos[None, None, :] > plan.q_pos[:, :, None] - window
            mask = mask & inside[:, None].repeat(1, 1, plan.group, 1)
        out = _attend(padded.transpose(1, 2), keys, values, mask, scale, softcap)
    return out.transpose(1, 2)[plan.token_seq, plan.token_row]


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm computed in fp32. With ``residual``: returns (norm(x + residual), x + residual)."""
    if residual is not None:
        x = x + residual
        residual = x
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    out = (normed * weight.float()).to(x.dtype)
    return out if residual is None else (out, residual)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q ``[num_tokens, num_heads, head_dim]`` and k ``[num_tokens, num_kv_heads, head_dim]``.

    ``cos_sin_cache`` is ``[max_position, rotary_dim]``: cos in the first half, sin in the
    second. Neox style rotates the two halves of the rotary dims (HF's rotate_half);
    otherwise adjacent pairs are rotated (GPT-J / llama.cpp style). Returns new tensors.
    """
    cos, sin = cos_sin_cache[positions].float().chunk(2, dim=-1)  # [num_tokens, rotary_dim / 2]
    both = _rotate(torch.cat((q, k), dim=1), cos, sin, is_neox)  # one pass for q and k: half the ops
    return both[:, : q.shape[1]], both[:, q.shape[1] :]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    rotary_dim = cos.shape[-1] * 2
    rot, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
    cos, sin = cos[:, None, :], sin[:, None, :]
    if is_neox:
        x1, x2 = rot.chunk(2, dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    rotated = torch.cat((o1, o2), dim=-1) if is_neox else torch.stack((o1, o2), dim=-1).flatten(-2)
    rotated = rotated.to(x.dtype)
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``[n, 2d] -> [n, d]``: silu of the first half times the second half (gate, up)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``[n, 2d] -> [n, d]``: GELU (tanh approximation, Gemma's GeGLU) of the gate times the up half."""
    gate, up = x.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up


def dequantize_w4(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    g_idx: torch.Tensor,
    group_size: int,
    fmt: str,
) -> torch.Tensor:
    """The fp32 weight ``[K, N]`` of an AWQ (gemm, 4-bit) or GPTQ (v2 zeros, 4 or 8 bits) packed layer.

    ``W[k, n] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n]``. ``g_idx`` (int32 ``[K]``) is
    always given: the loader fills ``k // group_size`` where a checkpoint has none, and
    converts GPTQ v1 zeros to v2.
    """
    from .quant_pack import unpack_layer

    codes, zeros = unpack_layer(qweight, qzeros, g_idx.shape[0], fmt)
    groups = g_idx.long()
    return (codes - zeros[groups]).float() * scales[groups].float()


def w4a16_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    g_idx: torch.Tensor,
    group_size: int,
    fmt: str,
) -> torch.Tensor:
    """``x [M, K] @ W [K, N]`` for a packed weight; the oracle materialises W (the kernel never does)."""
    weight = dequantize_w4(qweight, scales, qzeros, g_idx, group_size, fmt)
    return (x.float() @ weight).to(x.dtype)
