"""The CPU int4 path (torch's int4pack matmul, bf16) computes what the dequantizing reference computes."""

from __future__ import annotations

import pytest
import torch

from engine.quant.int4_cpu import Int4CpuWeight, cpu_int4_available
from kernels import reference
from kernels.quant_pack import pack_awq, pack_gptq

pytestmark = pytest.mark.skipif(not cpu_int4_available(), reason="this torch has no CPU int4 matmul")


def _layer(fmt: str, k: int, n: int, group_size: int, act_order: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    groups = k // group_size
    codes = torch.randint(0, 16, (k, n), generator=gen)
    zeros = torch.randint(0, 16, (groups, n), generator=gen)
    scales = (torch.rand(groups, n, generator=gen) * 0.02 + 0.005).to(torch.bfloat16)
    g_idx = torch.arange(k) // group_size
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    if fmt == "awq":
        qweight, qzeros = pack_awq(codes, zeros)
    else:
        qweight, qzeros = pack_gptq(codes, zeros, 4, False)
    return qweight, qzeros, scales, g_idx.int()


@pytest.mark.parametrize("fmt, k, n, group_size, act_order", [
    ("awq", 128, 96, 32, False),
    ("gptq", 192, 64, 64, True),  # act-order: inputs permuted so groups are consecutive
    ("gptq", 384, 64, 384, False),  # one group per column: repeated over 128-wide sub-groups
    ("gptq", 512, 32, 256, True),
])
def test_int4_cpu_matmul_equals_the_reference(fmt, k, n, group_size, act_order):
    qweight, qzeros, scales, g_idx = _layer(fmt, k, n, group_size, act_order)
    weight = Int4CpuWeight.from_packed(qweight, qzeros, scales, g_idx, group_size, fmt)
    assert weight is not None and (weight.input_order is not None) == act_order
    x = torch.randn(7, k, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    expected = reference.w4a16_gemm(x.float(), qweight, scales, qzeros, g_idx, group_size, fmt)
    got = weight.matmul(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2 * float(expected.abs().mean()))


def test_groups_the_kernel_cannot_hold_fall_back():
    qweight, qzeros, scales, g_idx = _layer("gptq", 64, 32, 16, False)
    assert Int4CpuWeight.from_packed(qweight, qzeros, scales, g_idx, 16, "gptq") is None
