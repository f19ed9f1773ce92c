"""Low-bit weights as stored (groups of codes with float parameters) and as torch's CPU kernels take them.

``Int4Groups`` is the form of torch's int4 CPU matmul (``_weight_int4pack_mm_for_cpu``):
``w = (q - 8) * scale + zero`` per group of consecutive inputs. GGUF Q4_0 is it with zero 0,
Q4_1 with ``zero = min + 8 * scale``; AWQ/GPTQ's ``scale * (q - z)`` is it with
``zero = scale * (8 - z)`` (act-order inputs permuted so each group's inputs are consecutive).
``Int8Groups`` is GGUF Q8_0, ``w = q * scale`` (Q5_0 and Q6_K likewise, Q6_K in groups of 16), or
``w = q * scale + zero`` with an optional per-group offset (Q5_1, Q5_K: codes 0..31); torch's int8
matmul (``_weight_int8pack_mm``) takes one scale per output row, so it is requantized per row for
that kernel.

With bf16 activations the kernels read a quarter (int4) or half (int8) of a bf16 weight's bytes
and never materialise it, but their cost grows with the number of rows much faster than a dense
matmul's: each kernel module says up to how many rows it wins (measured in benchmarks/NOTES.md).

A batch-invariant engine takes the ``rows`` kernels instead (``RowsMatmul``): ours, one per weight for
every step, giving a row the same bits at any row count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

KERNEL_GROUP_SIZES = (256, 128, 64, 32)
_INNER_K_TILES = 2
LowBitKernels = Literal["torch", "rows"]  # torch's kernels for small steps; ours (row-invariant) for every step
ROWS_LANES = 16  # outputs per block of RowsMatmul's packed layout
# accumulator lane i of the rows kernel reads the pair its unpack instructions build at vector position
# _LANE_SOURCE[i]; packing puts output i of each block at that position
_LANE_SOURCE = torch.tensor([0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15])


def cpu_int4_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def rows_kernel_available() -> bool:
    """``RowsMatmul`` needs AVX512-BF16 dot products."""
    from engine.kernels.cpu import cpu_fingerprint

    return "avx512_bf16" in cpu_fingerprint().split("-")


@dataclass
class Int4Groups:
    codes: torch.Tensor  # uint8 [N, K], 0..15
    scales: torch.Tensor  # fp32 [N, K // group_size]
    zeros: torch.Tensor  # fp32 [N, K // group_size]

    @property
    def group_size(self) -> int:
        return self.codes.shape[1] // self.scales.shape[1]

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dequantize(self) -> torch.Tensor:
        """``[N, K]`` fp32."""
        expand = lambda t: t.repeat_interleave(self.group_size, dim=1)  # noqa: E731
        return (self.codes.float() - 8) * expand(self.scales) + expand(self.zeros)

    def rows(self, index: torch.Tensor) -> "Int4Groups":
        return Int4Groups(self.codes[index], self.scales[index], self.zeros[index])


@dataclass
class Int8Groups:
    codes: torch.Tensor  # int8 [N, K]
    scales: torch.Tensor  # fp32 [N, K // group_size]
    zeros: torch.Tensor | None = None  # fp32 [N, K // group_size], added after scaling; None: all 0

    @property
    def group_size(self) -> int:
        return self.codes.shape[1] // self.scales.shape[1]

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dequantize(self) -> torch.Tensor:
        """``[N, K]`` fp32."""
        weight = self.codes.float() * self.scales.repeat_interleave(self.group_size, dim=1)
        return weight if self.zeros is None else weight + self.zeros.repeat_interleave(self.group_size, dim=1)

    def rows(self, index: torch.Tensor) -> "Int8Groups":
        return Int8Groups(self.codes[index], self.scales[index], None if self.zeros is None else self.zeros[index])


LowBitGroups = Int4Groups | Int8Groups


def concat_groups(parts: list[LowBitGroups]) -> LowBitGroups | None:
    """Shards of one fused layer stacked along the outputs; None if their kinds or groups differ."""
    kind, size = type(parts[0]), parts[0].group_size
    if any(type(p) is not kind or p.group_size != size for p in parts):
        return None
    if kind is Int8Groups and any(p.zeros is not None for p in parts):  # offset and plain shards: zeros for the plain
        parts = [p if p.zeros is not None else Int8Groups(p.codes, p.scales, torch.zeros_like(p.scales)) for p in parts]
    fields = ("codes", "scales") if kind is Int8Groups and parts[0].zeros is None else ("codes", "scales", "zeros")
    return kind(*(torch.cat([getattr(p, f) for p in parts]) for f in fields))


def int4_groups_from_packed(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor,
                            g_idx: torch.Tensor) -> tuple[Int4Groups, torch.Tensor | None] | None:
    """An AWQ/GPTQ layer (codes ``[K, N]``, true zeros and scales ``[G, N]``, ``g_idx [K]``) as groups of
    consecutive inputs, and the input order that makes them consecutive (None: already in order).
    None where groups have unequal sizes (not expressible as consecutive runs)."""
    k, num_groups = codes.shape[0], scales.shape[0]
    groups = g_idx.long()
    if k % num_groups or not torch.equal(torch.bincount(groups, minlength=num_groups),
                                         torch.full((num_groups,), k // num_groups)):
        return None
    order = torch.argsort(groups, stable=True)
    scale = scales.float()
    int4 = Int4Groups(codes[order].T.to(torch.uint8).contiguous(), scale.T.contiguous(),
                      (scale * (8 - zeros.float())).T.contiguous())
    return int4, None if torch.equal(order, torch.arange(k)) else order


class Int4Matmul(nn.Module):
    """torch's CPU int4 matmul; faster than a dense bf16 one up to ``max_rows`` rows on this CPU."""

    max_rows = 16

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                 input_order: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("input_order", input_order)  # act-order: the inputs' order that makes groups consecutive
        self.group_size = group_size

    @classmethod
    def from_groups(cls, groups: Int4Groups, input_order: torch.Tensor | None = None) -> "Int4Matmul | None":
        """None where the kernel cannot hold the layer (groups not a multiple of 32)."""
        sub_group = next((g for g in KERNEL_GROUP_SIZES if groups.group_size % g == 0), None)
        if sub_group is None or not cpu_int4_available():
            return None
        repeat = groups.group_size // sub_group
        params = torch.stack((groups.scales.T, groups.zeros.T), dim=-1).repeat_interleave(repeat, dim=0)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(groups.codes.int().contiguous(), _INNER_K_TILES)
        return cls(packed, params.to(torch.bfloat16).contiguous(), sub_group, input_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, K]`` bf16 -> ``[M, N]`` bf16."""
        if self.input_order is not None:
            x = x[:, self.input_order]
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), self.packed, self.group_size,
                                                          self.scales_and_zeros)


class Int8Matmul(nn.Module):
    """One int8 code per weight and one scale per output row; wins over bf16 at one row (1.5-2x), barely
    at two to four, so it stops at one: the batch of one is a graph of its own anyway."""

    max_rows = 1

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)

    @classmethod
    def from_groups(cls, groups: Int8Groups) -> "Int8Matmul":
        """Requantized per row: the row's largest |w| maps to 127."""
        weight = groups.dequantize()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
        codes = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(codes, scales.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x.contiguous(), self.codes, self.scales)


class RowsMatmul(nn.Module):
    """Our AVX512-BF16 kernel (kernels/csrc/row_invariant_matmul.cpp) on a layer's 4-bit codes. Each output is
    one fixed sequence of bf16 dot products in input order whatever the number of rows, so a row gets the
    same bits alone or among 31 others; it reads the 4-bit codes at one row (near torch's int4 kernel) and
    shares a block's dequantized weights among the rows of a larger step."""

    max_rows = None  # every step

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, shifts: torch.Tensor, out_features: int,
                 input_order: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.register_buffer("shifts", shifts)
        self.register_buffer("input_order", input_order)
        self.out_features = out_features

    @classmethod
    def from_groups(cls, groups: Int4Groups, input_order: torch.Tensor | None = None) -> "RowsMatmul | None":
        """Packed in blocks of 16 outputs (padded), two inputs a byte; None where groups split input pairs."""
        if groups.group_size % 2:
            return None
        rows, inputs = groups.shape
        blocks = -(-rows // ROWS_LANES)
        position_output = torch.empty_like(_LANE_SOURCE)
        position_output[_LANE_SOURCE] = torch.arange(ROWS_LANES)
        order = (torch.arange(blocks)[:, None] * ROWS_LANES + position_output).flatten()

        def by_block(t: torch.Tensor) -> torch.Tensor:
            """``[rows, n]`` -> ``[blocks, 16, n]``, zero rows padding the last block, lanes in kernel order."""
            padded = torch.cat((t, t.new_zeros(blocks * ROWS_LANES - rows, t.shape[1])))
            return padded[order].view(blocks, ROWS_LANES, -1)

        codes = by_block(groups.codes).view(blocks, ROWS_LANES, inputs // 2, 2)
        packed = (codes[..., 0] | (codes[..., 1] << 4)).permute(0, 2, 1).contiguous()  # [block, pair, lane]
        # w = (q - 8) * scale + zero = q * scale + (zero - 8 * scale), by [block, group, lane]
        scales, shifts = (by_block(t).permute(0, 2, 1).contiguous()
                          for t in (groups.scales, groups.zeros - 8 * groups.scales))
        return cls(packed, scales, shifts, rows, input_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, K]`` bf16 -> ``[M, N]`` bf16."""
        if self.input_order is not None:
            x = x[:, self.input_order]
        return torch.ops.engine_cpu.rows_matmul(x.contiguous(), self.codes, self.scales, self.shifts,
                                                self.out_features)


class PartsMatmul(nn.Module):
    """A fused layer whose parts the checkpoint holds in different low-bit kinds (Q4_K_M files: Q4_K q
    and k beside a Q6_K v): each part on its own kernel, the outputs joined, so that no part is read
    as a dense copy. It pays up to the rows its slowest part's kernel does."""

    def __init__(self, parts: list[Int4Matmul | Int8Matmul | RowsMatmul]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        limits = [part.max_rows for part in parts if part.max_rows is not None]
        self.max_rows = min(limits) if limits else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


def low_bit_matmul(groups: LowBitGroups, input_order: torch.Tensor | None = None,
                   kernels: LowBitKernels = "torch") -> Int4Matmul | Int8Matmul | RowsMatmul | None:
    """The CPU kernel module of the family ``kernels`` for ``groups`` (None where none can hold them: the
    rows family holds 4-bit codes only, 8-bit ones stay on the dense weight)."""
    if kernels == "rows":
        return RowsMatmul.from_groups(groups, input_order) if isinstance(groups, Int4Groups) else None
    if isinstance(groups, Int4Groups):
        return Int4Matmul.from_groups(groups, input_order)
    return Int8Matmul.from_groups(groups)


def take_groups(groups: LowBitGroups, dim: int, start: int, size: int) -> LowBitGroups:
    """Outputs ``start .. start + size`` (``dim`` 0) or inputs (``dim`` 1, whole groups only) of low-bit
    groups: a tensor-parallel rank's share, still low-bit."""
    per = 1 if dim == 0 else groups.group_size
    if start % per or size % per:
        raise ValueError(f"a shard of inputs {start}..{start + size} cuts groups of {per}")
    return type(groups)(**{name: getattr(groups, name).narrow(dim, start // (1 if name == "codes" else per),
                                                              size // (1 if name == "codes" else per))
                           for name in groups.__dataclass_fields__ if getattr(groups, name) is not None})
