"""w4a16_gemm: ``x [M, K] @ W [K, N]`` with W packed as AWQ (gemm) or GPTQ (v2 zeros; 4 or 8 bits).

Codes, zeros and scales are read per ``[BLOCK_K, BLOCK_N]`` tile and dequantized in registers:
the full-precision weight never exists in memory. ``g_idx`` gives each input row's group, so
GPTQ act-order needs no reordering. Words are masked after every shift (int32 shifts are
arithmetic). Accumulation is fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M, BLOCK_N, BLOCK_K = 16, 64, 32


@triton.jit
def _w4a16_kernel(
    x_ptr, qweight_ptr, scales_ptr, qzeros_ptr, g_idx_ptr, out_ptr,
    M, N, K, x_stride, out_stride,
    BITS: tl.constexpr, IS_AWQ: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    PF: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    row_mask = rows < M
    col_mask = cols < N
    if IS_AWQ:  # column j of a word sits in nibble slot (j >> 1) + 4 * (j & 1)
        col_shift = 4 * (((cols % 8) >> 1) + 4 * ((cols % 8) & 1))
        packed_cols = N // 8
        packed_col = cols // 8
    else:
        col_shift = BITS * (cols % PF)
        packed_cols = N // PF
        packed_col = cols // PF
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        k_mask = ks < K
        tile_mask = k_mask[:, None] & col_mask[None, :]
        x = tl.load(x_ptr + rows[:, None] * x_stride + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        if IS_AWQ:
            words = tl.load(qweight_ptr + ks[:, None] * packed_cols + packed_col[None, :], mask=tile_mask, other=0)
            codes = (words >> col_shift[None, :]) & MASK
        else:
            words = tl.load(qweight_ptr + (ks // PF)[:, None] * N + cols[None, :], mask=tile_mask, other=0)
            codes = (words >> (BITS * (ks % PF))[:, None]) & MASK
        groups = tl.load(g_idx_ptr + ks, mask=k_mask, other=0)
        scales = tl.load(scales_ptr + groups[:, None] * N + cols[None, :], mask=tile_mask, other=0.0)
        zero_words = tl.load(qzeros_ptr + groups[:, None] * packed_cols + packed_col[None, :], mask=tile_mask, other=0)
        zeros = (zero_words >> col_shift[None, :]) & MASK
        weight = (codes - zeros).to(tl.float32) * scales.to(tl.float32)
        acc += tl.dot(x.to(x_ptr.dtype.element_ty), weight.to(x_ptr.dtype.element_ty), input_precision=PRECISION)
    tl.store(out_ptr + rows[:, None] * out_stride + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])


def w4a16_gemm_triton(x, qweight, scales, qzeros, g_idx, group_size, fmt, *, out=None):
    """Same contract as ``engine.kernels.reference.w4a16_gemm``; ``out`` optionally receives the result."""
    if fmt not in ("awq", "gptq"):
        raise ValueError(f"fmt must be 'awq' or 'gptq', got {fmt!r}")
    x2 = x.reshape(-1, x.shape[-1])
    assert x2.stride(-1) == 1 and qweight.is_contiguous() and qzeros.is_contiguous() and scales.is_contiguous()
    m, k = x2.shape
    n = scales.shape[1]
    bits = 4 if fmt == "awq" else 32 * qweight.shape[0] // k
    assert g_idx.shape == (k,) and bits in (4, 8)
    out = torch.empty((m, n), dtype=x.dtype, device=x.device) if out is None else out.view(m, n)
    if m:
        grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
        _w4a16_kernel[grid](
            x2, qweight, scales, qzeros, g_idx, out, m, n, k, x2.stride(0), out.stride(0),
            BITS=bits, IS_AWQ=fmt == "awq", PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K,
        )
    return out.reshape(*x.shape[:-1], n)
