"""4-bit weights repacked for torch's CPU int4 matmul (``_weight_int4pack_mm_for_cpu``).

With bf16 activations it reads a quarter of the bytes of a bf16 weight and never materialises
it, where the portable reference dequantizes the whole matrix every call. Its dequantization is
``(q - 8) * scale + zero`` with the zero in the float domain: an AWQ/GPTQ layer's
``scale * (q - z)`` is that with ``zero = scale * (8 - z)``. Its groups must be 32, 64, 128 or
256 consecutive inputs, so a larger group repeats its parameters over sub-groups, and act-order
layers are permuted so each group's inputs are consecutive (the input is permuted to match).
"""

from __future__ import annotations

import torch

from kernels.quant_pack import unpack_layer

KERNEL_GROUP_SIZES = (256, 128, 64, 32)
_INNER_K_TILES = 2


def cpu_int4_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


class Int4CpuWeight:
    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                 input_order: torch.Tensor | None) -> None:
        self.packed, self.scales_and_zeros, self.group_size = packed, scales_and_zeros, group_size
        self.input_order = input_order  # act-order: the inputs' order that makes groups consecutive

    @classmethod
    def from_packed(cls, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                    group_size: int, method: str) -> "Int4CpuWeight | None":
        """4-bit codes; None where the kernel cannot hold the layer (groups not a multiple of 32)."""
        sub_group = next((g for g in KERNEL_GROUP_SIZES if group_size % g == 0), None)
        if sub_group is None or not cpu_int4_available():
            return None
        codes, zeros = unpack_layer(qweight, qzeros, g_idx.shape[0], method)
        k = codes.shape[0]
        groups = g_idx.long()
        if not torch.equal(torch.bincount(groups, minlength=k // group_size), torch.full((k // group_size,), group_size)):
            return None  # groups of unequal sizes: not expressible as consecutive runs
        order = torch.argsort(groups, stable=True)
        in_order = torch.equal(order, torch.arange(k))
        codes = codes[order]
        scale = scales.float()
        zero = scale * (8 - zeros.float())
        repeat = group_size // sub_group
        params = torch.stack((scale, zero), dim=-1).repeat_interleave(repeat, dim=0)  # [K / sub_group, N, 2]
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.T.contiguous().int(), _INNER_K_TILES)
        return cls(packed, params.to(torch.bfloat16).contiguous(), sub_group, None if in_order else order)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, K]`` bf16 -> ``[M, N]`` bf16."""
        if self.input_order is not None:
            x = x[:, self.input_order]
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), self.packed, self.group_size,
                                                          self.scales_and_zeros)
