"""Linear layers over a dense weight, plus the checkpoint's own 4/8-bit weight for small steps on the CPU,
each owning how its checkpoint tensors are cut for its tensor-parallel rank.

The dense weight (in the model's dtype) serves every step on every device. On the CPU in bf16,
a layer whose checkpoint stored it in low-bit blocks (GGUF Q4_0/Q4_1/Q4_K/Q5_0/Q5_1/Q5_K/Q6_K/Q8_0, AWQ/GPTQ
4-bit) also keeps those blocks in torch's int4/int8 kernel layout and uses them for steps of at most
``low_bit.max_rows`` rows: a decode step of a few sequences reads a quarter of the bytes. Larger
steps are bound by arithmetic, not bytes, and run faster on the dense weight (benchmarks/NOTES.md).

``LinearShards`` says where a rank's layer sits in the checkpoint's whole layer, as nano-vllm's
column-, row- and QKV-parallel layers do: a column-parallel layer (q/k/v, gate/up, lm_head) holds
some output rows of each of its parts, a row-parallel one (o_proj, down_proj) some input columns.
Fused projections load their parts into consecutive output rows; a checkpoint that stores them
fused (Phi-3's ``qkv_proj``, ``gate_up_proj``) is cut into its parts first. Low-bit parts are
joined once all are in (parts of different kinds each keep a kernel of their own).

A batch-invariant engine (``EngineConfig.batch_invariant``) computes a layer whose checkpoint holds 4-bit codes
on our row-invariant kernel (``RowsMatmul``) at every step, and any other on the dense weight in calls of at
most ``INVARIANT_ROWS`` rows: within that, oneDNN's bf16 matmul gives a row the same bits at any row count,
while past it, it blocks larger calls in ways that change some rows' bits with the call's size.
tests/kernels/test_row_invariance.py checks these facts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.parallel import Shard

INVARIANT_ROWS = 32
from engine.model.quant.lowbit import (
    Int4Matmul,
    Int8Matmul,
    LowBitGroups,
    LowBitKernels,
    PartsMatmul,
    RowsMatmul,
    concat_groups,
    low_bit_matmul,
    take_groups,
)


@dataclass(frozen=True)
class LinearShards:
    """A rank's share of a checkpoint layer of ``in_features`` inputs and parts of ``part_sizes`` outputs:
    ``part_rows`` of each part (column-parallel) and the ``inputs`` columns (row-parallel)."""

    in_features: int
    part_sizes: tuple[int, ...]
    part_rows: tuple[Shard, ...]
    inputs: Shard

    @classmethod
    def whole(cls, in_features: int, part_sizes: tuple[int, ...]) -> "LinearShards":
        return cls(in_features, part_sizes, tuple(Shard(0, size) for size in part_sizes), Shard(0, in_features))

    @classmethod
    def column(cls, in_features: int, part_sizes: tuple[int, ...], part_rows: tuple[Shard, ...]) -> "LinearShards":
        """Output rows split; rows past a part's checkpoint size are padding (a vocabulary cut in equal shards)."""
        return cls(in_features, part_sizes, part_rows, Shard(0, in_features))

    @classmethod
    def row(cls, inputs: Shard, in_features: int, out_features: int) -> "LinearShards":
        return cls(in_features, (out_features,), (Shard(0, out_features),), inputs)

    @property
    def local_parts(self) -> tuple[int, ...]:
        return tuple(rows.size for rows in self.part_rows)

    @property
    def part_starts(self) -> list[int]:
        """Where each part begins among the whole layer's outputs."""
        return [sum(self.part_sizes[:index]) for index in range(len(self.part_sizes))]

    @property
    def output_ranges(self) -> list[Shard] | None:
        """The rank's output rows in the whole layer's numbering; None where it holds them all."""
        if self.local_parts == self.part_sizes:
            return None
        return [Shard(start + rows.start, rows.size) for start, rows in zip(self.part_starts, self.part_rows)]

    @property
    def input_range(self) -> Shard | None:
        """The rank's input columns; None where it holds them all."""
        return None if self.inputs.size == self.in_features else self.inputs

    def split_fused(self, tensor: torch.Tensor | LowBitGroups) -> list[torch.Tensor | LowBitGroups]:
        """A checkpoint tensor holding every part stacked along the outputs, as one tensor per part."""
        return [_narrow(tensor, 0, Shard(start, size)) for start, size in zip(self.part_starts, self.part_sizes)]

    def cut(self, tensor: torch.Tensor | LowBitGroups, part: int) -> torch.Tensor | LowBitGroups:
        """This rank's piece of part ``part`` of a checkpoint weight (``[out, in]``) or bias (``[out]``)."""
        expected = (self.part_sizes[part], self.in_features)[: len(tensor.shape)]
        if tuple(tensor.shape) != expected:
            raise ValueError(f"has shape {tuple(tensor.shape)}, expected {expected}")
        rows = self.part_rows[part]
        if rows.start + rows.size > tensor.shape[0]:  # a vocabulary's last shard: padding rows past its end
            if not isinstance(tensor, torch.Tensor):
                tensor = tensor.dequantize()
            present = tensor[rows.start : rows.start + rows.size]
            tensor = torch.cat((present, present.new_zeros(rows.size - present.shape[0], *present.shape[1:])))
        elif rows.size != tensor.shape[0]:
            tensor = _narrow(tensor, 0, rows)
        if self.input_range is not None and len(tensor.shape) > 1:
            tensor = _narrow(tensor, 1, self.inputs)
        return tensor


def _narrow(tensor: torch.Tensor | LowBitGroups, dim: int, shard: Shard) -> torch.Tensor | LowBitGroups:
    if isinstance(tensor, torch.Tensor):
        return shard.take(tensor, dim)
    return take_groups(tensor, dim, shard.start, shard.size)


class Linear(nn.Module):
    def __init__(self, shards: LinearShards, bias: bool = False) -> None:
        super().__init__()
        self.shards = shards
        self.in_features, self.out_features = shards.inputs.size, sum(shards.local_parts)
        self.output_sizes = shards.local_parts
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(self.out_features), requires_grad=False) if bias else None
        self.low_bit: Int4Matmul | Int8Matmul | RowsMatmul | PartsMatmul | None = None
        self._low_bit_parts: dict[int, LowBitGroups] = {}
        self.rows_per_call: int | None = None  # set by ``make_batch_invariant``

    @classmethod
    def dense(cls, in_features: int, out_features: int, bias: bool = False) -> "Linear":
        """A layer of one part, unsharded."""
        return cls(LinearShards.whole(in_features, (out_features,)), bias)

    def load_checkpoint(self, name: str, tensor: torch.Tensor | LowBitGroups, part: int | None) -> None:
        """Load a checkpoint's ``weight`` or ``bias`` of part ``part``, or of every part stacked (``None``)
        in a layer of several parts, cut to this rank's share."""
        if part is None and len(self.output_sizes) > 1:
            for index, piece in enumerate(self.shards.split_fused(tensor)):
                self.load(name, self.shards.cut(piece, index), index)
        else:
            self.load(name, self.shards.cut(tensor, part or 0), part or 0)

    def load(self, name: str, tensor: torch.Tensor | LowBitGroups, shard: int = 0) -> None:
        """Copy this rank's part ``shard`` of ``weight`` or ``bias``; low-bit groups are also kept for ``finalize``."""
        if not isinstance(tensor, torch.Tensor):
            self._low_bit_parts[shard] = tensor
            tensor = tensor.dequantize()
        start = sum(self.output_sizes[:shard])
        destination = getattr(self, name).data.narrow(0, start, self.output_sizes[shard])
        if destination.shape != tensor.shape:
            raise ValueError(f"{name} part {shard} has shape {tuple(tensor.shape)}, expected {tuple(destination.shape)}")
        destination.copy_(tensor.to(destination.dtype))

    @torch.no_grad()
    def finalize(self, low_bit: LowBitKernels | None) -> None:
        """``low_bit``: keep the checkpoint's blocks in a CPU kernel of that family (all parts low-bit)."""
        parts, self._low_bit_parts = self._low_bit_parts, {}
        if not low_bit or len(parts) != len(self.output_sizes):
            return
        ordered = [parts[i] for i in range(len(parts))]
        groups = concat_groups(ordered)
        if groups is not None:
            self.low_bit = low_bit_matmul(groups, kernels=low_bit)
            return
        kernels = [low_bit_matmul(part, kernels=low_bit) for part in ordered]
        if all(kernel is not None for kernel in kernels):
            self.low_bit = PartsMatmul(kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [num_tokens, in_features]``."""
        limit = None if self.low_bit is None else self.low_bit.max_rows
        if self.low_bit is not None and (limit is None or x.shape[0] <= limit):
            out = self.low_bit(x)
        elif self.rows_per_call is not None and x.shape[0] > self.rows_per_call:
            out = torch.cat([F.linear(rows, self.weight) for rows in x.split(self.rows_per_call)])
        else:
            out = F.linear(x, self.weight)
        return out if self.bias is None else out + self.bias


def make_batch_invariant(model: nn.Module) -> None:
    """Every dense matmul of ``model`` in calls of at most ``INVARIANT_ROWS`` rows (its low-bit layers were
    loaded onto the ``rows`` kernels, which need no split)."""
    for module in model.modules():
        if isinstance(module, Linear):
            if module.low_bit is not None and module.low_bit.max_rows is not None:
                raise ValueError("a batch-invariant model's low-bit layers must be on the rows kernels")
            module.rows_per_call = INVARIANT_ROWS
