"""A linear layer over a dense weight, plus the checkpoint's own 4/8-bit weight for small steps on the CPU.

The dense weight (in the model's dtype) serves every step on every device. On the CPU in bf16,
a layer whose checkpoint stored it in low-bit blocks (GGUF Q4_0/Q4_1/Q8_0, AWQ/GPTQ 4-bit) also
keeps those blocks in torch's int4/int8 kernel layout and uses them for steps of at most
``low_bit.max_rows`` rows: a decode step of a few sequences reads a quarter of the bytes. Larger
steps are bound by arithmetic, not bytes, and run faster on the dense weight (benchmarks/NOTES.md).

Fused projections (q/k/v, gate/up) load their parts into consecutive output rows
(``output_sizes``); low-bit parts are joined once all are in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.quant.lowbit import Int4Matmul, Int8Matmul, LowBitGroups, concat_groups, low_bit_matmul


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 output_sizes: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.output_sizes = output_sizes or (out_features,)
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.low_bit: Int4Matmul | Int8Matmul | None = None
        self._low_bit_parts: dict[int, LowBitGroups] = {}

    def load(self, name: str, tensor: torch.Tensor | LowBitGroups, shard: int = 0) -> None:
        """Copy part ``shard`` of ``weight`` or ``bias``; low-bit groups are also kept for ``finalize``."""
        if not isinstance(tensor, torch.Tensor):
            self._low_bit_parts[shard] = tensor
            tensor = tensor.dequantize()
        start = sum(self.output_sizes[:shard])
        destination = getattr(self, name).data.narrow(0, start, self.output_sizes[shard])
        if destination.shape != tensor.shape:
            raise ValueError(f"{name} part {shard} has shape {tuple(tensor.shape)}, expected {tuple(destination.shape)}")
        destination.copy_(tensor.to(destination.dtype))

    @torch.no_grad()
    def finalize(self, low_bit: bool) -> None:
        """``low_bit``: keep the checkpoint's blocks in a CPU kernel (all parts low-bit, of one kind)."""
        parts, self._low_bit_parts = self._low_bit_parts, {}
        if not low_bit or len(parts) != len(self.output_sizes):
            return
        groups = concat_groups([parts[i] for i in range(len(parts))])
        if groups is not None:
            self.low_bit = low_bit_matmul(groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [num_tokens, in_features]``."""
        if self.low_bit is not None and x.shape[0] <= self.low_bit.max_rows:
            out = self.low_bit(x)
        else:
            out = F.linear(x, self.weight)
        return out if self.bias is None else out + self.bias
