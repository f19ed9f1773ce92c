"""Low-bit weights: GGUF blocks decoded exactly, and torch's CPU int4/int8 kernels computing what the
dequantized weights compute (bf16 activations: within bf16 rounding of the output)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.kernels.quant_pack import pack_awq, pack_gptq, unpack_layer
from engine.model.loader.gguf import (
    _int4_groups,
    _int8_groups,
    _q4_k_groups,
    _q5_0_groups,
    _q5_1_groups,
    _q5_k_groups,
    _q6_k_groups,
)
from engine.model.layers.linear import Linear, LinearShards
from engine.model.quant.lowbit import (
    Int4Groups,
    Int4Matmul,
    Int8Groups,
    Int8Matmul,
    PartsMatmul,
    concat_groups,
    cpu_int4_available,
    int4_groups_from_packed,
    take_groups,
)

needs_int4 = pytest.mark.skipif(not cpu_int4_available(), reason="this torch has no CPU int4 matmul")


def _close_to(got: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
    """bf16 activations and bf16 outputs: within 2% of the output's scale."""
    expected = x.float() @ weight.T
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2 * float(expected.abs().mean()))


_QUANTIZABLE_DECODERS = {"Q4_0": lambda raw: _int4_groups(raw, with_min=False),
                         "Q4_1": lambda raw: _int4_groups(raw, with_min=True), "Q5_1": _q5_1_groups,
                         "Q8_0": _int8_groups}


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q5_1", "Q8_0"])
def test_gguf_blocks_decode_to_what_gguf_py_dequantizes(kind):
    import gguf

    qtype = gguf.GGMLQuantizationType[kind]
    weight = np.random.default_rng(0).standard_normal((48, 128)).astype(np.float32)
    blocks = gguf.quants.quantize(weight, qtype)  # [rows, bytes]
    expected = torch.from_numpy(gguf.quants.dequantize(blocks, qtype))
    groups = _QUANTIZABLE_DECODERS[kind](torch.from_numpy(blocks.copy()))
    assert groups.group_size == 32 and groups.shape == (48, 128)
    torch.testing.assert_close(groups.dequantize(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("kind", "decode", "group_size", "fp16_fields"), [
    ("Q4_K", _q4_k_groups, 32, (0, 2)), ("Q5_0", _q5_0_groups, 32, (0,)), ("Q5_1", _q5_1_groups, 32, (0, 2)),
    ("Q5_K", _q5_k_groups, 32, (0, 2)), ("Q6_K", _q6_k_groups, 16, (208,))])
def test_k_quant_and_5_bit_blocks_decode_to_what_gguf_py_dequantizes(kind, decode, group_size, fp16_fields):
    """gguf-py cannot write these (Q5_1 it can, above: here every bit pattern of its codes too), so the
    blocks are random bytes (every bit pattern is a valid block) with sane fp16 scales at the byte offsets
    ``fp16_fields``."""
    import gguf

    qtype = gguf.GGMLQuantizationType[kind]
    elements, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(24, 512 // elements, size), dtype=np.uint8)
    for start in fp16_fields:
        blocks[..., start : start + 2] = (rng.standard_normal((24, 512 // elements, 1)) * 0.01).astype(
            np.float16).view(np.uint8)
    blocks = blocks.reshape(24, -1)
    expected = torch.from_numpy(gguf.quants.dequantize(blocks, qtype))
    groups = decode(torch.from_numpy(blocks))
    assert groups.group_size == group_size and groups.shape == (24, 512)
    torch.testing.assert_close(groups.dequantize(), expected, rtol=1e-5, atol=1e-6)


def _int4_groups_random(n: int, k: int, group_size: int, seed: int = 0) -> Int4Groups:
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    scales = torch.rand(n, k // group_size, generator=gen) * 0.02 + 0.005
    zeros = (torch.rand(n, k // group_size, generator=gen) - 0.5) * 0.1
    return Int4Groups(codes, scales, zeros)


@needs_int4
@pytest.mark.parametrize("k, n, group_size", [(128, 96, 32), (192, 64, 64), (512, 32, 256), (384, 64, 384)])
def test_int4_matmul_equals_its_dequantized_weight(k, n, group_size):
    groups = _int4_groups_random(n, k, group_size)
    matmul = Int4Matmul.from_groups(groups)
    assert matmul is not None
    x = torch.randn(7, k, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    got = matmul(x)
    assert got.dtype == torch.bfloat16
    _close_to(got, x, groups.dequantize())


@needs_int4
def test_int4_groups_the_kernel_cannot_hold_are_refused():
    assert Int4Matmul.from_groups(_int4_groups_random(32, 64, 16)) is None


def test_int8_matmul_equals_its_dequantized_weight():
    gen = torch.Generator().manual_seed(2)
    groups = Int8Groups(torch.randint(-127, 128, (64, 96), generator=gen, dtype=torch.int8),
                        torch.rand(64, 3, generator=gen) * 0.01 + 0.001)
    x = torch.randn(3, 96, generator=gen).to(torch.bfloat16)
    _close_to(Int8Matmul.from_groups(groups)(x), x, groups.dequantize())


@pytest.mark.parametrize(("kind", "decode"), [("Q5_1", _q5_1_groups), ("Q5_K", _q5_k_groups)])
def test_affine_5_bit_blocks_on_the_int8_kernel(kind, decode):
    """Q5_1/Q5_K's offsets (``zeros``) give gguf-py's values bit for bit and survive rows, shards and the
    per-row requantization for the kernel."""
    import gguf

    elements, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, size=(64, 512 // elements, size), dtype=np.uint8)
    blocks[..., 0:4] = (rng.standard_normal((64, 512 // elements, 2)) * 0.01).astype(np.float16).view(np.uint8)
    blocks = blocks.reshape(64, -1)
    groups = decode(torch.from_numpy(blocks))
    assert groups.zeros is not None and groups.zeros.shape == groups.scales.shape
    weight = groups.dequantize()
    assert torch.equal(weight, torch.from_numpy(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[kind])))
    index = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(groups.rows(index).dequantize(), weight[index], rtol=0, atol=0)
    torch.testing.assert_close(take_groups(groups, 1, 64, 128).dequantize(), weight[:, 64:192], rtol=0, atol=0)
    torch.testing.assert_close(take_groups(groups, 0, 8, 16).dequantize(), weight[8:24], rtol=0, atol=0)
    matmul = Int8Matmul.from_groups(groups)
    held = matmul.codes.float() * matmul.scales.float()[:, None]  # random blocks' rows span wide ranges:
    step = weight.abs().amax(dim=1, keepdim=True) / 127  # the per-row requantization is within a step
    assert bool(((held - weight).abs() <= step).all())
    x = torch.randn(1, 512, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    _close_to(matmul(x), x, held)


def test_fused_shards_concatenate_and_mixed_kinds_do_not():
    a, b = _int4_groups_random(8, 64, 32, 0), _int4_groups_random(4, 64, 32, 1)
    joined = concat_groups([a, b])
    torch.testing.assert_close(joined.dequantize(), torch.cat((a.dequantize(), b.dequantize())))
    eight = Int8Groups(torch.zeros(4, 64, dtype=torch.int8), torch.ones(4, 2))
    assert concat_groups([a, eight]) is None
    offset = Int8Groups(torch.ones(2, 64, dtype=torch.int8), torch.ones(2, 2), torch.full((2, 2), -0.5))
    mixed = concat_groups([eight, offset])  # a plain shard beside an offset one (Q8_0 v beside Q5_K q/k)
    torch.testing.assert_close(mixed.dequantize(), torch.cat((eight.dequantize(), offset.dequantize())))
    assert concat_groups([eight, eight]).zeros is None
    assert concat_groups([a, _int4_groups_random(4, 64, 64)]) is None


@needs_int4
def test_a_fused_layer_of_mixed_kinds_keeps_each_part_low_bit():
    """Q4_K_M's q and k (Q4_K, int4) beside its v (Q6_K, int8): each part on its own kernel, none dense."""
    gen = torch.Generator().manual_seed(3)
    q, k = _int4_groups_random(64, 128, 32, 0), _int4_groups_random(32, 128, 32, 1)
    v = Int8Groups(torch.randint(-127, 128, (32, 128), generator=gen, dtype=torch.int8),
                   torch.rand(32, 8, generator=gen) * 0.01 + 0.001)
    layer = Linear(LinearShards.whole(128, (64, 32, 32))).to(torch.bfloat16)
    for part, groups in enumerate((q, k, v)):
        layer.load_checkpoint("weight", groups, part)
    layer.finalize(low_bit="torch")
    assert isinstance(layer.low_bit, PartsMatmul) and layer.low_bit.max_rows == Int8Matmul.max_rows
    x = torch.randn(1, 128, generator=gen).to(torch.bfloat16)
    kernels = [Int4Matmul.from_groups(q), Int4Matmul.from_groups(k), Int8Matmul.from_groups(v)]
    assert torch.equal(layer(x), torch.cat([kernel(x) for kernel in kernels], dim=-1))


@needs_int4
@pytest.mark.parametrize("fmt, k, n, group_size, act_order", [
    ("awq", 128, 96, 32, False),
    ("gptq", 192, 64, 64, True),  # act-order: inputs permuted so groups are consecutive
    ("gptq", 384, 64, 384, False),  # one group per column: repeated over 128-wide sub-groups
])
def test_awq_gptq_layers_on_the_int4_kernel(fmt, k, n, group_size, act_order):
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (k, n), generator=gen)
    zeros = torch.randint(0, 16, (k // group_size, n), generator=gen)
    scales = torch.rand(k // group_size, n, generator=gen) * 0.02 + 0.005
    g_idx = torch.arange(k) // group_size
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    qweight, qzeros = pack_awq(codes, zeros) if fmt == "awq" else pack_gptq(codes, zeros, 4, False)
    unpacked_codes, true_zeros = unpack_layer(qweight, qzeros, k, fmt)
    groups, order = int4_groups_from_packed(unpacked_codes, true_zeros, scales, g_idx.int())
    assert (order is not None) == act_order
    weight = ((codes - zeros[g_idx]).float() * scales[g_idx]).T  # [N, K], the format's own definition
    x = torch.randn(5, k, generator=gen).to(torch.bfloat16)
    _close_to(Int4Matmul.from_groups(groups, order)(x), x, weight)
