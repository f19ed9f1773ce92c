"""Every Triton kernel against its torch reference, on fresh random inputs with shapes from hypothesis.

On a CPU the kernels run in Triton's interpreter (small shapes); on CUDA natively. Output
buffers are poisoned with NaN before each run and never-written cache slots hold NaN, so a
kernel that skips an element or reads past a sequence's end fails. Errors are relative norms.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.kernels import OPS, kernel_set, reference, resolve_kernels

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# The interpreter computes with numpy, which has no bfloat16: bf16 runs on CUDA only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
# Relative-norm tolerances: fp32 differs by summation order only; fp16 carries 11 mantissa bits
# into fp32 accumulators; bf16 8 bits.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
EXAMPLES = 12 if DEVICE.type == "cpu" else 60

TESTED_OPS = {"store_kv", "paged_attention_decode", "paged_attention_prefill", "plan_decode", "plan_prefill",
              "rms_norm", "rotary_embedding", "silu_and_mul", "gelu_tanh_and_mul", "w4a16_gemm"}
TRITON = kernel_set("triton")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-12))


def nan_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


def test_every_exported_kernel_is_tested_here():
    assert set(OPS) == TESTED_OPS


def paged_cache(seq_lens, block_size, num_kv_heads, head_dim, dtype, gen):
    """NaN-poisoned caches with each sequence's K/V in shuffled blocks, and its -1-padded block table."""
    blocks = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(blocks) + 3
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=DEVICE)
    v_cache = torch.full_like(k_cache, float("nan"))
    order = torch.randperm(num_blocks, generator=gen).tolist()
    table = torch.full((len(seq_lens), max(blocks) + 1), -1, dtype=torch.int32)
    for i, n in enumerate(seq_lens):
        ids = [order.pop() for _ in range(blocks[i])]
        table[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        slots = torch.tensor([ids[p // block_size] * block_size + p % block_size for p in range(n)], device=DEVICE)
        k = torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
        v = torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
        reference.store_kv(k, v, k_cache, v_cache, slots)
    return k_cache, v_cache, table.to(DEVICE)


attention_shapes = st.fixed_dictionaries({
    "block_size": st.sampled_from([8, 16, 32, 128]),
    "num_kv_heads": st.sampled_from([1, 2]),
    "group": st.sampled_from([1, 4, 8]),
    "head_dim": st.sampled_from([16, 40, 64]),
    "dtype": st.sampled_from(DTYPES),
    "seed": st.integers(0, 2**16),
})


def seq_lengths(block_size_key="block_size"):
    # Ragged lengths, including 1 and exact multiples of a block.
    return st.lists(st.one_of(st.integers(1, 70), st.sampled_from([1, 8, 16, 32, 64])), min_size=1, max_size=4)


# (sliding window, score cap): 0 is off; a window shorter than a tile and one spanning tiles and splits
masking = st.sampled_from([(0, 0.0), (0, 0.0), (5, 0.0), (40, 0.0), (0, 3.0), (20, 2.0)])


@settings(max_examples=EXAMPLES, deadline=None)
@given(shape=attention_shapes, seq_lens=seq_lengths(), split_tokens=st.sampled_from([None, 32, 64]), masks=masking)
def test_paged_attention_decode(shape, seq_lens, split_tokens, masks):
    window, softcap = masks
    gen = torch.Generator().manual_seed(shape["seed"])
    dtype, head_dim = shape["dtype"], shape["head_dim"]
    k_cache, v_cache, table = paged_cache(seq_lens, shape["block_size"], shape["num_kv_heads"], head_dim, dtype, gen)
    heads = shape["num_kv_heads"] * shape["group"]
    q = torch.randn(len(seq_lens), heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    out = nan_like(q)
    # None: the plan the engine builds once per step
    plan = split_tokens or TRITON.plan_decode(table, lens, shape["block_size"], heads, shape["num_kv_heads"])
    TRITON.paged_attention_decode(q, k_cache, v_cache, table, lens, head_dim**-0.5, plan, window=window,
                                  softcap=softcap, out=out)
    want = reference.paged_attention_decode(q.float(), k_cache.float(), v_cache.float(), table, lens,
                                            head_dim**-0.5, window=window, softcap=softcap)
    assert relative_error(out, want) < TOLERANCE[dtype]


@settings(max_examples=EXAMPLES, deadline=None)
@given(shape=attention_shapes, seq_lens=seq_lengths(), data=st.data(), masks=masking)
def test_paged_attention_prefill(shape, seq_lens, data, masks):
    window, softcap = masks
    gen = torch.Generator().manual_seed(shape["seed"])
    dtype, head_dim = shape["dtype"], shape["head_dim"]
    # q_len == seq_len is a plain prefill; shorter attends a cached prefix or an earlier chunk.
    q_lens = [data.draw(st.integers(1, n)) for n in seq_lens]
    k_cache, v_cache, table = paged_cache(seq_lens, shape["block_size"], shape["num_kv_heads"], head_dim, dtype, gen)
    heads = shape["num_kv_heads"] * shape["group"]
    q = torch.randn(sum(q_lens), heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    out = nan_like(q)
    plan = TRITON.plan_prefill(table, cu, lens, shape["block_size"], heads, shape["num_kv_heads"])
    assert plan == max(q_lens)
    TRITON.paged_attention_prefill(q, k_cache, v_cache, table, cu, lens, head_dim**-0.5, plan, window=window,
                                   softcap=softcap, out=out)
    want = reference.paged_attention_prefill(q.float(), k_cache.float(), v_cache.float(), table, cu, lens,
                                             head_dim**-0.5, window=window, softcap=softcap)
    assert relative_error(out, want) < TOLERANCE[dtype]


@settings(max_examples=EXAMPLES, deadline=None)
@given(num_tokens=st.integers(1, 20), num_kv_heads=st.sampled_from([1, 2, 8]), head_dim=st.sampled_from([16, 40, 64]),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_store_kv_writes_only_its_slots(num_tokens, num_kv_heads, head_dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    block_size, num_blocks = 16, 4
    num_slots = block_size * num_blocks
    slots = torch.randperm(num_slots, generator=gen)[:num_tokens]
    slots[torch.rand(num_tokens, generator=gen) < 0.3] = -1  # padding tokens
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    caches = [torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=DEVICE)
              for _ in range(4)]
    TRITON.store_kv(k, v, caches[0], caches[1], slots.to(DEVICE))
    reference.store_kv(k, v, caches[2], caches[3], slots.to(DEVICE))
    assert torch.equal(caches[0].nan_to_num(7.0), caches[2].nan_to_num(7.0))  # the same slots, the same bits
    assert torch.equal(caches[1].nan_to_num(7.0), caches[3].nan_to_num(7.0))


@settings(max_examples=EXAMPLES, deadline=None)
@given(rows=st.integers(1, 9), hidden=st.sampled_from([16, 48, 576]), with_residual=st.booleans(),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_rms_norm(rows, hidden, with_residual, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x, weight, residual = (torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)
                           for shape in ((rows, hidden), (hidden,), (rows, hidden)))
    residual = residual if with_residual else None
    buffers = tuple(nan_like(x) for _ in range(1 + with_residual))
    got = TRITON.rms_norm(x, weight, 1e-6, residual, out=buffers)
    want = reference.rms_norm(x, weight, 1e-6, residual)
    got, want = (got, want) if with_residual else ((got,), (want,))
    for g, w in zip(got, want):
        assert relative_error(g, w) < TOLERANCE[dtype]


@settings(max_examples=EXAMPLES, deadline=None)
@given(num_tokens=st.integers(1, 9), heads=st.sampled_from([(4, 2), (8, 1)]), head_dim=st.sampled_from([16, 64]),
       rotary_fraction=st.sampled_from([1.0, 0.5]), is_neox=st.booleans(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
def test_rotary_embedding(num_tokens, heads, head_dim, rotary_fraction, is_neox, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    rotary_dim = int(head_dim * rotary_fraction)
    angles = torch.rand(64, rotary_dim // 2, generator=gen) * 6.28
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1).to(DEVICE)
    positions = torch.randint(0, 64, (num_tokens,), generator=gen).to(DEVICE)
    q = torch.randn(num_tokens, heads[0], head_dim, generator=gen).to(dtype).to(DEVICE)
    k = torch.randn(num_tokens, heads[1], head_dim, generator=gen).to(dtype).to(DEVICE)
    got = TRITON.rotary_embedding(positions, q, k, cache, is_neox, out=(nan_like(q), nan_like(k)))
    want = reference.rotary_embedding(positions, q, k, cache, is_neox)
    for g, w in zip(got, want):
        assert relative_error(g, w) < TOLERANCE[dtype]


@settings(max_examples=EXAMPLES, deadline=None)
@given(rows=st.integers(1, 9), d=st.sampled_from([8, 24, 1536]), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
def test_silu_and_mul(rows, d, dtype, seed):
    x = torch.randn(rows, 2 * d, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)
    out = torch.full((rows, d), float("nan"), dtype=dtype, device=DEVICE)
    got = TRITON.silu_and_mul(x, out=out)
    assert relative_error(got, reference.silu_and_mul(x)) < TOLERANCE[dtype]


@settings(max_examples=EXAMPLES, deadline=None)
@given(rows=st.integers(1, 9), d=st.sampled_from([8, 24, 2048]), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
def test_gelu_tanh_and_mul(rows, d, dtype, seed):
    x = 3 * torch.randn(rows, 2 * d, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)
    out = torch.full((rows, d), float("nan"), dtype=dtype, device=DEVICE)
    got = TRITON.gelu_tanh_and_mul(x, out=out)
    assert relative_error(got, reference.gelu_tanh_and_mul(x.float())) < TOLERANCE[dtype]


@settings(max_examples=EXAMPLES, deadline=None)
@given(fmt=st.sampled_from(["awq", "gptq4", "gptq8"]), rows=st.integers(1, 20), k_groups=st.integers(1, 3),
       group_size=st.sampled_from([32, 64]), n=st.sampled_from([8, 64, 72]), act_order=st.booleans(),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_w4a16_gemm(fmt, rows, k_groups, group_size, n, act_order, dtype, seed):
    from engine.kernels.quant_pack import pack_awq, pack_gptq

    gen = torch.Generator().manual_seed(seed)
    bits = 8 if fmt == "gptq8" else 4
    k = k_groups * group_size
    codes = torch.randint(0, 1 << bits, (k, n), generator=gen)
    zeros = torch.randint(0, 1 << bits, (k_groups, n), generator=gen)
    scales = (torch.rand(k_groups, n, generator=gen) * 0.1).half()
    g_idx = (torch.arange(k) // group_size).int()
    if act_order and fmt != "awq":
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    qweight, qzeros = pack_awq(codes, zeros) if fmt == "awq" else pack_gptq(codes, zeros, bits, v1=False)
    packed = [t.to(DEVICE) for t in (qweight, scales, qzeros, g_idx)]
    x = torch.randn(rows, k, generator=gen).to(dtype).to(DEVICE)
    out = torch.full((rows, n), float("nan"), dtype=dtype, device=DEVICE)
    kind = "awq" if fmt == "awq" else "gptq"
    got = TRITON.w4a16_gemm(x, *packed, group_size, kind, out=out)
    want = reference.w4a16_gemm(x.float(), *packed, group_size, kind)
    assert relative_error(got, want) < TOLERANCE[dtype]


def test_the_kernel_choice_resolves_once_to_a_set(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [resolve_kernels(c, cpu) for c in ("auto", "torch", "triton")] == ["torch", "torch", "triton"]
    assert resolve_kernels("auto", cuda) == "triton"
    monkeypatch.setenv("ENGINE_KERNELS", "triton")
    assert resolve_kernels(None, cpu) == "triton"  # the environment only where the config leaves it open
    assert resolve_kernels("torch", cpu) == "torch"
    monkeypatch.setenv("ENGINE_KERNELS", "bogus")
    with pytest.raises(ValueError, match="ENGINE_KERNELS"):
        resolve_kernels(None, cpu)
    torch_set = kernel_set("torch")
    assert torch_set.paged_attention_decode is reference.paged_attention_decode
    assert all(getattr(TRITON, op).__module__.startswith("engine.kernels.triton.") for op in OPS)
