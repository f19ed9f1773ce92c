"""Fused row-wise ops: rms_norm (with residual add), rotary embedding, silu_and_mul and gelu_tanh_and_mul.

All compute in fp32 and store in the input dtype. One program per row (token).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr,
    x_stride, residual_stride, eps,
    HIDDEN: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < HIDDEN
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = x + tl.load(residual_ptr + row * residual_stride + cols, mask=mask, other=0.0)
        tl.store(residual_out_ptr + row * HIDDEN + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    variance = tl.sum(x32 * x32, axis=0) / HIDDEN
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    out = x32 * tl.rsqrt(variance + eps) * weight
    tl.store(out_ptr + row * HIDDEN + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
                    *, out: tuple[torch.Tensor, ...] | None = None):
    """``out``: optional (normed[, residual]) buffers shaped like x, for poisoned-buffer tests."""
    hidden = x.shape[-1]
    x2 = x.reshape(-1, hidden)
    assert x2.stride(-1) == 1, "the normalised dimension must be contiguous"
    buffers = [b.view(-1, hidden) for b in out] if out is not None else [torch.empty(x2.shape, dtype=x.dtype, device=x.device)
                                                                      for _ in range(1 + (residual is not None))]
    out = buffers[0]
    residual2 = residual.reshape(-1, hidden) if residual is not None else x2
    residual_out = buffers[1] if residual is not None else out
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](
            x2, residual2, weight, out, residual_out, x2.stride(0), residual2.stride(0), eps,
            HIDDEN=hidden, BLOCK=triton.next_power_of_2(hidden), HAS_RESIDUAL=residual is not None,
        )
    out = out.reshape(x.shape)
    return out if residual is None else (out, residual_out.reshape(x.shape))


@triton.jit
def _rotary_kernel(
    positions_ptr, x_ptr, out_ptr, cos_sin_ptr,
    x_token_stride, x_head_stride, cache_stride,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HALF: tl.constexpr, HALF_BLOCK: tl.constexpr,
    HEAD_BLOCK: tl.constexpr, IS_NEOX: tl.constexpr,
):
    """Rotate the first 2 * HALF dims of every head of one token; the rest is copied."""
    token = tl.program_id(0)
    position = tl.load(positions_ptr + token)
    pair = tl.arange(0, HALF_BLOCK)
    pair_mask = pair < HALF
    cos = tl.load(cos_sin_ptr + position * cache_stride + pair, mask=pair_mask, other=1.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + position * cache_stride + HALF + pair, mask=pair_mask, other=0.0).to(tl.float32)
    if IS_NEOX:
        first, second = pair, pair + HALF
    else:
        first, second = 2 * pair, 2 * pair + 1
    dims = tl.arange(0, HEAD_BLOCK)
    for head in range(NUM_HEADS):
        src = x_ptr + token * x_token_stride + head * x_head_stride
        dst = out_ptr + (token * NUM_HEADS + head) * HEAD_DIM
        rest = (dims >= 2 * HALF) & (dims < HEAD_DIM)
        tl.store(dst + dims, tl.load(src + dims, mask=rest), mask=rest)
        x1 = tl.load(src + first, mask=pair_mask).to(tl.float32)
        x2 = tl.load(src + second, mask=pair_mask).to(tl.float32)
        tl.store(dst + first, (x1 * cos - x2 * sin).to(out_ptr.dtype.element_ty), mask=pair_mask)
        tl.store(dst + second, (x2 * cos + x1 * sin).to(out_ptr.dtype.element_ty), mask=pair_mask)


def _rotate(positions: torch.Tensor, x: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool,
            out: torch.Tensor | None) -> torch.Tensor:
    num_tokens, num_heads, head_dim = x.shape
    assert x.stride(2) == 1 and cos_sin_cache.stride(1) == 1
    half = cos_sin_cache.shape[1] // 2
    if out is None:
        out = torch.empty((num_tokens, num_heads, head_dim), dtype=x.dtype, device=x.device)
    if num_tokens:
        _rotary_kernel[(num_tokens,)](
            positions, x, out, cos_sin_cache, x.stride(0), x.stride(1), cos_sin_cache.stride(0),
            NUM_HEADS=num_heads, HEAD_DIM=head_dim, HALF=half, HALF_BLOCK=triton.next_power_of_2(half),
            HEAD_BLOCK=triton.next_power_of_2(head_dim), IS_NEOX=is_neox,
        )
    return out


def rotary_embedding_triton(positions, q, k, cos_sin_cache, is_neox: bool = True, *, out=(None, None)):
    return _rotate(positions, q, cos_sin_cache, is_neox, out[0]), _rotate(positions, k, cos_sin_cache, is_neox, out[1])


@triton.jit
def _gated_kernel(x_ptr, out_ptr, x_stride, D: tl.constexpr, BLOCK: tl.constexpr, GELU: tl.constexpr):
    """act(gate) * up over one row's two halves: SiLU, or GELU's tanh approximation."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    gate = tl.load(x_ptr + row * x_stride + cols, mask=mask).to(tl.float32)
    up = tl.load(x_ptr + row * x_stride + D + cols, mask=mask).to(tl.float32)
    if GELU:  # 0.5 x (1 + tanh(u)) == x sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3)
        act = gate * tl.sigmoid(2.0 * 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate))
    else:
        act = gate / (1.0 + tl.exp(-gate))
    tl.store(out_ptr + row * D + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def _gated(x: torch.Tensor, out: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    d = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * d)
    assert x2.stride(-1) == 1
    out = torch.empty((x2.shape[0], d), dtype=x.dtype, device=x.device) if out is None else out.view(-1, d)
    block = min(1024, triton.next_power_of_2(d))
    if x2.shape[0]:
        _gated_kernel[(x2.shape[0], triton.cdiv(d, block))](x2, out, x2.stride(0), D=d, BLOCK=block, GELU=gelu)
    return out.reshape(*x.shape[:-1], d)


def silu_and_mul_triton(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    return _gated(x, out, gelu=False)


def gelu_tanh_and_mul_triton(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    return _gated(x, out, gelu=True)
