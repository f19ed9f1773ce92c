"""AWQ (Lin et al. 2023): protect the weights that meet large activations by scaling them up before
rounding, and fold the inverse scale into the operation that produces their input.

For each group of linears sharing an input, a grid search picks ``alpha`` in ``s = mean|x|^alpha``
minimising the error of the quantized layers' outputs on calibration inputs. The format written
is plain AWQ gemm: only the weights changed.
"""

from __future__ import annotations

import torch

from .checkpoint import quantize_rtn
from .format import QuantFormat

GRID = 20


def _fake_quantize(weight: torch.Tensor, spec: QuantFormat) -> torch.Tensor:
    """What a loader would compute from the RTN-quantized ``weight [N, K]``."""
    return quantize_rtn(weight, spec).dequantize().T


@torch.no_grad()
def search_scales(weights: list[torch.Tensor], inputs: torch.Tensor, spec: QuantFormat) -> torch.Tensor:
    """Per-input-channel scales ``[K]`` for linears ``weights`` (each ``[N_i, K]``) reading ``inputs [T, K]``."""
    x = inputs.float()
    magnitude = x.abs().mean(dim=0).clamp(min=1e-6)
    reference = [x @ w.float().T for w in weights]
    best_error, best = float("inf"), torch.ones_like(magnitude)
    for step in range(GRID):
        alpha = step / GRID
        scales = magnitude.pow(alpha)
        scales = scales / (scales.max() * scales.min()).sqrt()
        error = 0.0
        for w, want in zip(weights, reference):
            quantized = _fake_quantize(w.float() * scales, spec) / scales
            error += float((x @ quantized.T - want).pow(2).mean())
        if error < best_error:
            best_error, best = error, scales
    return best
