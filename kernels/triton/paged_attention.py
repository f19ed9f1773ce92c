"""Paged attention over block tables: decode (split over the KV length, then reduced) and prefill.

Shapes: q ``[num_tokens or num_seqs, num_heads, head_dim]``; caches ``[num_blocks, block_size,
num_kv_heads, head_dim]`` (contiguous); block_tables int32 ``[num_seqs, max_blocks]`` (-1 pads,
never read past ``seq_lens``). Any power-of-two block size works: K/V tiles of ``BLOCK_N``
tokens look up each token's block, so tiles and blocks need not line up. Softmax statistics
and accumulators are fp32; fp32 inputs use IEEE dots (no TF32). ``WINDOW`` > 0 (a sliding-window
layer's) skips the tiles before a query's window and masks within; ``SOFTCAP`` > 0 caps the scores
(``softcap * tanh(score / softcap)``, Gemma 2) before the softmax. Both are compile-time constants:
a model has one or two values of each.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 32  # KV tokens per tile
PREFILL_BLOCK_M = 32  # query rows per prefill program
MIN_DOT = 16  # tl.dot needs every dimension >= 16


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def _capped(scores, SOFTCAP: tl.constexpr):
    if SOFTCAP > 0:
        scores = SOFTCAP * (2.0 * tl.sigmoid(2.0 * scores / SOFTCAP) - 1.0)  # softcap * tanh(scores / softcap)
    return scores


@triton.jit
def _online_softmax_step(scores, v, m_i, l_i, acc, PRECISION: tl.constexpr):
    """Fold one tile of masked scores into the running max, sum and accumulator; a row that sees no key
    of the tile yet (-inf everywhere, as before its sliding window) stays at zero, not NaN."""
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(scores - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _load_kv_tile(cache_ptr, table_row_ptr, tok, tok_mask, kv_head, dims, dim_mask,
                  BLOCK_SIZE: tl.constexpr, ROW: tl.constexpr, HEAD_DIM: tl.constexpr):
    """K or V of tokens ``tok`` (one block-table lookup per token): ``[len(tok), HEAD_PAD]``, 0 where masked."""
    page = tl.load(table_row_ptr + tok // BLOCK_SIZE, mask=tok_mask, other=0).to(tl.int64)
    slot = page * BLOCK_SIZE + tok % BLOCK_SIZE
    ptrs = cache_ptr + slot[:, None] * ROW + kv_head * HEAD_DIM + dims[None, :]
    return tl.load(ptrs, mask=tok_mask[:, None] & dim_mask[None, :], other=0.0)


@triton.jit
def _decode_partial_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
    acc_ptr, max_ptr, sum_ptr,  # [num_seqs, num_heads, NUM_SPLITS, HEAD_PAD], [.., NUM_SPLITS] x2, fp32
    scale, q_seq_stride, q_head_stride, table_stride,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, ROW: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    TILE: tl.constexpr, SPLIT_TOKENS: tl.constexpr, NUM_SPLITS: tl.constexpr, PRECISION: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
):
    """One (sequence, kv head, split): all GROUP query heads of the kv head over SPLIT_TOKENS tokens."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    start = split * SPLIT_TOKENS
    end = tl.minimum(start + SPLIT_TOKENS, seq_len)
    if WINDOW > 0:
        start = tl.maximum(start, seq_len - WINDOW)

    rows = tl.arange(0, GROUP_PAD)
    row_mask = rows < GROUP
    heads = kv_head * GROUP + rows
    dims = tl.arange(0, HEAD_PAD)
    dim_mask = dims < HEAD_DIM
    q = tl.load(q_ptr + seq * q_seq_stride + heads[:, None] * q_head_stride + dims[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    table_row = block_tables_ptr + seq * table_stride

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_PAD], tl.float32)
    for tile_start in range(start, end, TILE):
        tok = tile_start + tl.arange(0, TILE)
        tok_mask = tok < end
        k = _load_kv_tile(k_cache_ptr, table_row, tok, tok_mask, kv_head, dims, dim_mask, BLOCK_SIZE, ROW, HEAD_DIM)
        v = _load_kv_tile(v_cache_ptr, table_row, tok, tok_mask, kv_head, dims, dim_mask, BLOCK_SIZE, ROW, HEAD_DIM)
        scores = _capped(tl.dot(q.to(k.dtype), tl.trans(k), input_precision=PRECISION) * scale, SOFTCAP)
        scores = tl.where(tok_mask[None, :], scores, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(scores, v, m_i, l_i, acc, PRECISION)

    out_rows = (seq * NUM_HEADS + heads) * NUM_SPLITS + split
    tl.store(acc_ptr + out_rows[:, None] * HEAD_PAD + dims[None, :], acc, mask=row_mask[:, None])
    tl.store(max_ptr + out_rows, m_i, mask=row_mask)
    tl.store(sum_ptr + out_rows, l_i, mask=row_mask)


@triton.jit
def _decode_reduce_kernel(
    acc_ptr, max_ptr, sum_ptr, out_ptr, out_seq_stride, out_head_stride,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    """Combine the splits of one (sequence, head): rescale each by exp(max_s - max) and normalise."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    split_mask = splits < NUM_SPLITS
    base = (seq * NUM_HEADS + head) * NUM_SPLITS
    m = tl.load(max_ptr + base + splits, mask=split_mask, other=float("-inf"))
    l = tl.load(sum_ptr + base + splits, mask=split_mask, other=0.0)
    m_all = tl.max(m, axis=0)
    weight = tl.where(m > float("-inf"), tl.exp(m - m_all), 0.0)
    dims = tl.arange(0, HEAD_PAD)
    acc = tl.load(acc_ptr + (base + splits)[:, None] * HEAD_PAD + dims[None, :], mask=split_mask[:, None], other=0.0)
    out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(l * weight, axis=0)
    tl.store(out_ptr + seq * out_seq_stride + head * out_head_stride + dims, out.to(out_ptr.dtype.element_ty),
             mask=dims < HEAD_DIM)


def decode_split_tokens(max_len: int, num_seqs: int, num_kv_heads: int) -> int:
    """Tokens per split: enough programs to fill a GPU, none shorter than one tile.

    Decided from host-side sizes only (no device sync), so a CUDA graph can capture it.
    """
    target_programs = 512
    splits = max(1, target_programs // max(1, num_seqs * num_kv_heads))
    per_split = triton.cdiv(max_len, splits)
    return max(BLOCK_N, triton.next_power_of_2(per_split))


def plan_decode_triton(block_tables, seq_lens, block_size: int, num_heads: int, num_kv_heads: int) -> int:
    """The step's tokens per split, the decode kernel's ``plan``."""
    return decode_split_tokens(block_tables.shape[1] * block_size, seq_lens.shape[0], num_kv_heads)


def paged_attention_decode_triton(q, k_cache, v_cache, block_tables, seq_lens, scale, plan=None, window: int = 0,
                                  softcap: float = 0.0, *, out=None):
    """``plan``: tokens per split (``plan_decode_triton``; tests vary it). ``out`` (optional) receives the
    result: tests pass a NaN-poisoned buffer."""
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and q.stride(2) == 1
    assert num_heads % num_kv_heads == 0 and block_tables.shape[0] == num_seqs
    out = torch.empty_like(q) if out is None else out
    if num_seqs == 0:
        return out
    group = num_heads // num_kv_heads
    head_pad = max(MIN_DOT, triton.next_power_of_2(head_dim))
    max_len = block_tables.shape[1] * block_size
    split_tokens = plan or decode_split_tokens(max_len, num_seqs, num_kv_heads)
    num_splits = triton.cdiv(max_len, split_tokens)
    acc = torch.empty((num_seqs, num_heads, num_splits, head_pad), dtype=torch.float32, device=q.device)
    maxes = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32, device=q.device)
    sums = torch.empty_like(maxes)
    _decode_partial_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, acc, maxes, sums,
        scale, q.stride(0), q.stride(1), block_tables.stride(0),
        NUM_HEADS=num_heads, GROUP=group, GROUP_PAD=max(MIN_DOT, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, HEAD_PAD=head_pad, ROW=num_kv_heads * head_dim, BLOCK_SIZE=block_size,
        TILE=BLOCK_N, SPLIT_TOKENS=split_tokens, NUM_SPLITS=num_splits, PRECISION=_dot_precision(k_cache.dtype),
        WINDOW=int(window), SOFTCAP=float(softcap),
    )
    _decode_reduce_kernel[(num_seqs, num_heads)](
        acc, maxes, sums, out, out.stride(0), out.stride(1),
        NUM_HEADS=num_heads, HEAD_DIM=head_dim, HEAD_PAD=head_pad,
        NUM_SPLITS=num_splits, SPLITS_PAD=triton.next_power_of_2(num_splits),
    )
    return out


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, cu_seqlens_q_ptr, seq_lens_ptr, out_ptr,
    scale, q_token_stride, q_head_stride, out_token_stride, out_head_stride, table_stride,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, ROW: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, TILE: tl.constexpr, PRECISION: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
):
    """One (query tile, sequence, head): causal attention of up to BLOCK_M query rows."""
    q_tile = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // GROUP
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    if q_tile * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context = seq_len - q_len  # tokens cached before this chunk

    rows = q_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    dims = tl.arange(0, HEAD_PAD)
    dim_mask = dims < HEAD_DIM
    tokens = (q_start + rows).to(tl.int64)
    q = tl.load(q_ptr + tokens[:, None] * q_token_stride + head * q_head_stride + dims[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    q_pos = context + rows
    kv_end = tl.minimum(seq_len, context + (q_tile + 1) * BLOCK_M)
    kv_start = 0
    if WINDOW > 0:  # the tile's first row sees nothing before its window; whole tiles before it are skipped
        kv_start = tl.maximum(context + q_tile * BLOCK_M - WINDOW + 1, 0) // TILE * TILE
    table_row = block_tables_ptr + seq * table_stride

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], tl.float32)
    for tile_start in range(kv_start, kv_end, TILE):
        tok = tile_start + tl.arange(0, TILE)
        tok_mask = tok < kv_end
        k = _load_kv_tile(k_cache_ptr, table_row, tok, tok_mask, kv_head, dims, dim_mask, BLOCK_SIZE, ROW, HEAD_DIM)
        v = _load_kv_tile(v_cache_ptr, table_row, tok, tok_mask, kv_head, dims, dim_mask, BLOCK_SIZE, ROW, HEAD_DIM)
        scores = _capped(tl.dot(q.to(k.dtype), tl.trans(k), input_precision=PRECISION) * scale, SOFTCAP)
        visible = (tok[None, :] <= q_pos[:, None]) & tok_mask[None, :]
        if WINDOW > 0:
            visible = visible & (tok[None, :] > q_pos[:, None] - WINDOW)
        scores = tl.where(visible, scores, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(scores, v, m_i, l_i, acc, PRECISION)

    out = acc / l_i[:, None]
    tl.store(out_ptr + tokens[:, None] * out_token_stride + head * out_head_stride + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


def plan_prefill_triton(block_tables, cu_seqlens_q, seq_lens, block_size: int, num_heads: int, num_kv_heads: int) -> int:
    """The step's longest query chunk, the prefill kernel's ``plan``: one device sync a step, not one a layer."""
    return int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())


def paged_attention_prefill_triton(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale, plan=None,
                                   window: int = 0, softcap: float = 0.0, *, out=None):
    """``plan``: the longest query chunk (``plan_prefill_triton``)."""
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and q.stride(2) == 1
    assert num_heads % num_kv_heads == 0 and cu_seqlens_q.shape[0] == seq_lens.shape[0] + 1
    out = torch.empty_like(q) if out is None else out
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0:
        return out
    max_q_len = plan or plan_prefill_triton(block_tables, cu_seqlens_q, seq_lens, block_size, num_heads, num_kv_heads)
    grid = (triton.cdiv(max_q_len, PREFILL_BLOCK_M), num_seqs, num_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, out,
        scale, q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, HEAD_PAD=max(MIN_DOT, triton.next_power_of_2(head_dim)),
        ROW=num_kv_heads * head_dim, BLOCK_SIZE=block_size, BLOCK_M=PREFILL_BLOCK_M, TILE=BLOCK_N,
        PRECISION=_dot_precision(k_cache.dtype), WINDOW=int(window), SOFTCAP=float(softcap),
    )
    return out
