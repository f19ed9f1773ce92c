"""RMSNorm over the engine's kernel set, with the residual add fused in."""

from __future__ import annotations

import torch
from torch import nn

from engine.kernels import KernelSet


class RMSNorm(nn.Module):
    """``offset``: what a checkpoint's weight is stored relative to. Gemma's norms scale by ``1 + w``;
    the offset is added as the weight loads, so every step runs the plain ``x * w`` kernel."""

    def __init__(self, size: int, eps: float, ops: KernelSet, offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps, self.ops, self.offset = eps, ops, offset

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return self.ops.rms_norm(x, self.weight, self.eps, residual)
