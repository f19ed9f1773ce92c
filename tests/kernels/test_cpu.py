"""kernels.cpu (what the compiled CPU decode step runs) against the reference: the C++ paged decode
attention eagerly and inside a compiled graph, and the traceable cache write.

The cache is NaN-poisoned outside what was written: reading past a sequence's length or through a
padded (-1) table entry would reach the output. Shapes cover the register-resident fast paths
(head_dim 32/64/128 with groups of 1-4) and the generic loop (head_dim 13, group 8).
"""

from __future__ import annotations

import pytest
import torch
import torch.fx.experimental._config as fx_config
from test_reference import _paged_setup

from engine.kernels import cpu, reference

CASES = [  # (seq_lens, block_size, kv_heads, group, head_dim)
    ([5], 4, 1, 1, 64),
    ([1, 17, 33], 16, 2, 3, 64),
    ([40, 3], 4, 2, 4, 128),
    ([9, 9, 2, 30], 1, 1, 2, 32),
    ([1, 17, 33], 16, 2, 8, 13),  # generic loop
]


@pytest.fixture(scope="module", autouse=True)
def built():
    cpu.load()


def _inputs(seq_lens, block_size, kv_heads, group, head_dim, seed=0):
    k_cache, v_cache, tables, _, _ = _paged_setup(seq_lens, block_size, kv_heads, head_dim, seed)
    q = torch.randn(len(seq_lens), kv_heads * group, head_dim, generator=torch.Generator().manual_seed(seed))
    return q, k_cache, v_cache, tables, torch.tensor(seq_lens, dtype=torch.int32)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("window", "softcap"), [(0, 0.0), (7, 0.0), (0, 2.0), (3, 1.5)])
def test_decode_attention_matches_the_reference(case, window, softcap):
    """``window``: a sliding-window layer's last positions; ``softcap``: Gemma 2's capped scores."""
    q, k_cache, v_cache, tables, seq_lens = _inputs(*case)
    scale = case[-1] ** -0.5
    expected = reference.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, scale, window=window,
                                                softcap=softcap)
    got = cpu.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, scale, window=window, softcap=softcap)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # bf16 in and out, fp32 inside: within bf16 rounding of the fp32 result
    got = cpu.paged_attention_decode(q.bfloat16(), k_cache.bfloat16(), v_cache.bfloat16(), tables, seq_lens, scale,
                                     window=window, softcap=softcap)
    torch.testing.assert_close(got.float(), expected, atol=3e-2, rtol=3e-2)


def test_decode_attention_in_a_compiled_graph_for_every_shape():
    compiled = torch.compile(cpu.paged_attention_decode, fullgraph=True, dynamic=False)
    for seq_lens in ([3], [1, 17, 33], [40, 3, 9, 12, 5]):  # batch and table width vary
        q, k_cache, v_cache, tables, lens = _inputs(seq_lens, 4, 2, 3, 64)
        for tensor in (q, tables, lens):
            torch._dynamo.mark_dynamic(tensor, 0)
        torch._dynamo.mark_dynamic(tables, 1)
        with fx_config.patch(backed_size_oblivious=True):
            got = compiled(q, k_cache, v_cache, tables, lens, 0.25)
        expected = reference.paged_attention_decode(q, k_cache, v_cache, tables, lens, 0.25)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_store_kv_writes_every_slot_like_the_reference():
    cache = torch.full((4, 4, 2, 8), float("nan"))
    k, v = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    slots = torch.tensor([5, 0, 14])
    ours_k, ours_v, ref_k, ref_v = (cache.clone() for _ in range(4))
    cpu.store_kv(k, v, ours_k, ours_v, slots)
    reference.store_kv(k, v, ref_k, ref_v, slots)
    torch.testing.assert_close(ours_k, ref_k, equal_nan=True)
    torch.testing.assert_close(ours_v, ref_v, equal_nan=True)
