"""The torch reference ops against obviously-correct token-by-token oracles and transformers.

Never-written cache slots are poisoned with NaN: an op that reads past a sequence's length
or through a padded (-1) block-table entry produces NaN and fails.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.kernels import reference

ATOL = 1e-5  # fp32 throughout: differences are summation order only


def _paged_setup(seq_lens, block_size, num_kv_heads, head_dim, seed):
    """A NaN-poisoned cache holding each sequence's K/V in shuffled blocks, plus the dense K/V."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 2
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"))
    v_cache = torch.full_like(k_cache, float("nan"))
    order = torch.randperm(num_blocks, generator=gen).tolist()
    width = max(blocks_per_seq)
    block_tables = torch.full((len(seq_lens), width), -1, dtype=torch.int32)
    dense_k, dense_v = [], []
    for i, n in enumerate(seq_lens):
        k = torch.randn(n, num_kv_heads, head_dim, generator=gen)
        v = torch.randn(n, num_kv_heads, head_dim, generator=gen)
        ids = [order.pop() for _ in range(blocks_per_seq[i])]
        block_tables[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        slots = torch.tensor([ids[p // block_size] * block_size + p % block_size for p in range(n)])
        reference.store_kv(k, v, k_cache, v_cache, slots)
        dense_k.append(k)
        dense_v.append(v)
    return k_cache, v_cache, block_tables, dense_k, dense_v


def _naive_attention(q, k, v, scale, window=0, softcap=0.0):
    """q [num_q, H, D] at the last num_q positions of k/v [L, KVH, D]; causal, the last ``window``
    positions only where ``window`` > 0, scores capped where ``softcap`` > 0; loops over heads."""
    num_q, num_heads = q.shape[:2]
    group = num_heads // k.shape[1]
    length = k.shape[0]
    out = torch.empty_like(q)
    for h in range(num_heads):
        kh, vh = k[:, h // group], v[:, h // group]
        for r in range(num_q):
            visible = length - num_q + r + 1
            first = max(0, visible - window) if window else 0
            scores = (kh[first:visible] @ q[r, h]) * scale
            if softcap:
                scores = torch.tanh(scores / softcap) * softcap
            out[r, h] = torch.softmax(scores, dim=0) @ vh[first:visible]
    return out


shapes = st.fixed_dictionaries({
    "block_size": st.sampled_from([1, 4, 16]),
    "kv_heads": st.sampled_from([1, 2]),
    "group": st.sampled_from([1, 4]),
    "head_dim": st.sampled_from([8, 13, 32]),
    "seed": st.integers(0, 2**16),
})


windows = st.sampled_from([0, 0, 1, 5, 16])  # 0: all positions
softcaps = st.sampled_from([0.0, 0.0, 2.0])


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seq_lens=st.lists(st.integers(1, 40), min_size=1, max_size=4), window=windows, softcap=softcaps)
def test_paged_attention_decode_matches_naive(shape, seq_lens, window, softcap):
    bs, kvh, d = shape["block_size"], shape["kv_heads"], shape["head_dim"]
    heads = kvh * shape["group"]
    k_cache, v_cache, tables, ks, vs = _paged_setup(seq_lens, bs, kvh, d, shape["seed"])
    q = torch.randn(len(seq_lens), heads, d)
    scale = d**-0.5
    got = reference.paged_attention_decode(q, k_cache, v_cache, tables, torch.tensor(seq_lens, dtype=torch.int32), scale,
                                           window=window, softcap=softcap)
    for i in range(len(seq_lens)):
        expected = _naive_attention(q[i : i + 1], ks[i], vs[i], scale, window, softcap)
        torch.testing.assert_close(got[i : i + 1], expected, atol=ATOL, rtol=0)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, data=st.data(), window=windows, softcap=softcaps)
def test_paged_attention_prefill_matches_naive(shape, data, window, softcap):
    bs, kvh, d = shape["block_size"], shape["kv_heads"], shape["head_dim"]
    heads = kvh * shape["group"]
    seq_lens = data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=4))
    # Each sequence's queries are its last q_len tokens: q_len == seq_len is a plain prefill,
    # a smaller q_len attends to a cached prefix or an earlier chunk.
    q_lens = [data.draw(st.integers(1, n)) for n in seq_lens]
    k_cache, v_cache, tables, ks, vs = _paged_setup(seq_lens, bs, kvh, d, shape["seed"])
    q = torch.randn(sum(q_lens), heads, d)
    cu = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32)
    scale = d**-0.5
    got = reference.paged_attention_prefill(q, k_cache, v_cache, tables, cu, torch.tensor(seq_lens, dtype=torch.int32), scale,
                                            window=window, softcap=softcap)
    for i in range(len(seq_lens)):
        rows = slice(int(cu[i]), int(cu[i + 1]))
        expected = _naive_attention(q[rows], ks[i], vs[i], scale, window, softcap)
        torch.testing.assert_close(got[rows], expected, atol=ATOL, rtol=0)


@settings(max_examples=15, deadline=None)
@given(shape=shapes, seq_lens=st.lists(st.integers(1, 40), min_size=1, max_size=4), window=windows)
def test_paged_attention_prefill_without_a_cached_prefix_matches_naive(shape, seq_lens, window):
    """Every query chunk is its whole sequence: the mask-free is_causal path, ragged lengths padded."""
    bs, kvh, d = shape["block_size"], shape["kv_heads"], shape["head_dim"]
    k_cache, v_cache, tables, ks, vs = _paged_setup(seq_lens, bs, kvh, d, shape["seed"])
    q = torch.randn(sum(seq_lens), kvh * shape["group"], d)
    cu = torch.tensor([0] + list(torch.tensor(seq_lens).cumsum(0)), dtype=torch.int32)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    got = reference.paged_attention_prefill(q, k_cache, v_cache, tables, cu, lens, d**-0.5, window=window)
    for i in range(len(seq_lens)):
        rows = slice(int(cu[i]), int(cu[i + 1]))
        expected = _naive_attention(q[rows], ks[i], vs[i], d**-0.5, window)
        torch.testing.assert_close(got[rows], expected, atol=ATOL, rtol=0)


def test_store_kv_skips_padding_slots():
    k_cache = torch.zeros(4, 2, 1, 3)
    v_cache = torch.zeros(4, 2, 1, 3)
    k = torch.arange(9.0).reshape(3, 1, 3) + 1
    v = -k
    reference.store_kv(k, v, k_cache, v_cache, torch.tensor([5, -1, 0]))
    assert torch.equal(k_cache.view(8, 1, 3)[5], k[0]) and torch.equal(k_cache.view(8, 1, 3)[0], k[2])
    assert torch.equal(v_cache.view(8, 1, 3)[5], v[0])
    assert int((k_cache != 0).any(-1).sum()) == 2  # nothing written for the -1 slot


def test_rms_norm_matches_transformers_with_fused_residual():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    hf = LlamaRMSNorm(24, eps=1e-6)
    hf.weight.data = torch.randn(24)
    x, residual = torch.randn(5, 24), torch.randn(5, 24)
    torch.testing.assert_close(reference.rms_norm(x, hf.weight, 1e-6), hf(x), atol=ATOL, rtol=0)
    normed, new_residual = reference.rms_norm(x, hf.weight, 1e-6, residual)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(normed, hf(x + residual), atol=ATOL, rtol=0)


@pytest.mark.parametrize("rotary_fraction", [1.0, 0.5])
def test_rotary_neox_matches_transformers(rotary_fraction):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    head_dim, base = 16, 10000.0
    rot = int(head_dim * rotary_fraction)
    inv_freq = 1.0 / base ** (torch.arange(0, rot, 2).float() / rot)
    freqs = torch.outer(torch.arange(64).float(), inv_freq)
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    positions = torch.tensor([0, 3, 63, 7])
    q, k = torch.randn(4, 4, head_dim), torch.randn(4, 2, head_dim)
    got_q, got_k = reference.rotary_embedding(positions, q, k, cache, is_neox=True)

    emb = torch.cat((freqs, freqs), dim=-1)[positions][None]  # HF layout: [batch, tokens, rot]

    def hf_layout(x):  # [tokens, heads, rot] -> [1, heads, tokens, rot]
        return x[..., :rot].transpose(0, 1)[None]

    want_q, want_k = apply_rotary_pos_emb(hf_layout(q), hf_layout(k), emb.cos(), emb.sin())
    torch.testing.assert_close(got_q[..., :rot], want_q[0].transpose(0, 1), atol=ATOL, rtol=0)
    torch.testing.assert_close(got_k[..., :rot], want_k[0].transpose(0, 1), atol=ATOL, rtol=0)
    assert torch.equal(got_q[..., rot:], q[..., rot:])


def test_rotary_interleaved_rotates_adjacent_pairs():
    cache = torch.tensor([[0.0, 1.0]])  # one frequency at angle 90 degrees: cos 0, sin 1
    x = torch.tensor([[[1.0, 2.0]]])
    got, _ = reference.rotary_embedding(torch.tensor([0]), x, x.clone(), cache, is_neox=False)
    torch.testing.assert_close(got, torch.tensor([[[-2.0, 1.0]]]))


def test_silu_and_mul():
    x = torch.randn(3, 10)
    torch.testing.assert_close(reference.silu_and_mul(x), torch.nn.functional.silu(x[:, :5]) * x[:, 5:])
