"""Which CPU matmul kernels give a row the same bits whatever the other rows of its step (issue 30).

Batch-invariant numerics rest on these facts of torch's CPU kernels, so they are checked rather than
assumed: the int4 and int8 weight kernels compute each row alone at any row count, and the dense
bf16 matmul does so up to 32 rows (past that, oneDNN's blocking gives some rows other bits). Our own
``RowsMatmul`` (the batch-invariant engine's 4-bit kernel) does at any row count, by construction, and
computes the layer's dequantized matmul.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kernels import cpu
from engine.model.quant.lowbit import (
    Int4Groups,
    Int4Matmul,
    Int8Groups,
    Int8Matmul,
    RowsMatmul,
    cpu_int4_available,
    rows_kernel_available,
)

ROWS = [2, 3, 7, 16, 17, 32, 33, 64, 100]
K, N = 512, 768


def _rows_alone_equal_rows_together(matmul, rows: int) -> bool:
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
    together = matmul(x)
    alone = torch.cat([matmul(x[i : i + 1]) for i in range(rows)])
    return torch.equal(together, alone)


@pytest.mark.skipif(not cpu_int4_available(), reason="this torch has no CPU int4 matmul")
@pytest.mark.parametrize("rows", ROWS)
def test_the_int4_kernel_computes_each_row_alone(rows):
    gen = torch.Generator().manual_seed(0)
    groups = Int4Groups(torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8),
                        torch.rand(N, K // 32, generator=gen) * 0.01, torch.randn(N, K // 32, generator=gen) * 0.01)
    assert _rows_alone_equal_rows_together(Int4Matmul.from_groups(groups), rows)


@pytest.mark.parametrize("rows", ROWS)
def test_the_int8_kernel_computes_each_row_alone(rows):
    gen = torch.Generator().manual_seed(1)
    groups = Int8Groups(torch.randint(-127, 128, (N, K), generator=gen, dtype=torch.int8),
                        torch.rand(N, K // 32, generator=gen) * 0.01 + 0.001)
    assert _rows_alone_equal_rows_together(Int8Matmul.from_groups(groups), rows)


@pytest.mark.parametrize("rows", [r for r in ROWS if r <= 32])
def test_the_dense_bf16_matmul_computes_each_row_alone_up_to_32_rows(rows):
    weight = (torch.randn(N, K, generator=torch.Generator().manual_seed(2)) * 0.02).to(torch.bfloat16)
    assert _rows_alone_equal_rows_together(lambda x: F.linear(x, weight), rows)


def _int4_groups(rows: int, inputs: int, group: int, seed: int) -> Int4Groups:
    gen = torch.Generator().manual_seed(seed)
    return Int4Groups(torch.randint(0, 16, (rows, inputs), generator=gen, dtype=torch.uint8),
                      torch.rand(rows, inputs // group, generator=gen) * 0.01,
                      torch.randn(rows, inputs // group, generator=gen) * 0.01)


needs_rows_kernel = pytest.mark.skipif(not rows_kernel_available(), reason="this CPU has no AVX512-BF16")


@needs_rows_kernel
@pytest.mark.parametrize("rows", ROWS)
def test_the_rows_kernel_computes_each_row_alone(rows):
    cpu.load()
    assert _rows_alone_equal_rows_together(RowsMatmul.from_groups(_int4_groups(N, K, 32, 3)), rows)


@needs_rows_kernel
@pytest.mark.parametrize("outputs, inputs, group, rows", [(768, 512, 32, 1), (200, 256, 64, 9), (37, 96, 32, 40)])
def test_the_rows_kernel_computes_the_dequantized_matmul(outputs, inputs, group, rows):
    """Any output count (a padded last block), one row in registers or many over a shared panel, act-order."""
    cpu.load()
    groups = _int4_groups(outputs, inputs, group, 4)
    order = torch.randperm(inputs, generator=torch.Generator().manual_seed(5))
    x = torch.randn(rows, inputs, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    expected = x[:, order].float() @ groups.dequantize().to(torch.bfloat16).float().T
    got = RowsMatmul.from_groups(groups, order)(x).float()
    # fp32 sums of exact products; weights and outputs rounded to bf16 (a misplaced lane or group is O(1) off)
    assert torch.allclose(got, expected, rtol=2**-7, atol=1e-2 * expected.abs().max().item())
