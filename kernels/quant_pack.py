"""AWQ and GPTQ packed integers <-> codes and zero points (``../shared/QUANT_FORMATS.md``).

int32 words are bit patterns: unpacking works on them as uint32 (int64 here) and masks after
every shift, so a set sign bit never leaks into a neighbour. AWQ packs 8 codes per word along
the output dimension in the interleaved order below; GPTQ packs ``32 / bits`` codes per word
in ascending order, ``qweight`` along the input dimension and ``qzeros`` along the output.
GPTQ v1 files store zero points minus one; v2 files and AWQ store them as they are.
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble slot s holds column 8c + AWQ_ORDER[s]


def _pack_factor(bits: int) -> int:
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    return 32 // bits


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 -> the same bits as int32."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_cols(packed: torch.Tensor, bits: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """``[R, C]`` words -> ``[R, C * pf]`` codes, column ``pf*c + order[s]`` from slot ``s``."""
    pf = _pack_factor(bits)
    order = order or tuple(range(pf))
    words = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(pf, device=packed.device) * bits
    slots = (words[..., None] >> shifts) & ((1 << bits) - 1)  # [R, C, pf] by slot
    by_column = torch.empty_like(slots)
    by_column[..., list(order)] = slots
    return by_column.reshape(packed.shape[0], -1).to(torch.int32)


def pack_cols(codes: torch.Tensor, bits: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    pf = _pack_factor(bits)
    order = order or tuple(range(pf))
    rows, cols = codes.shape
    if cols % pf:
        raise ValueError(f"{cols} columns are not a multiple of {pf}")
    grouped = codes.to(torch.int64).reshape(rows, cols // pf, pf)[..., list(order)] & ((1 << bits) - 1)
    shifts = torch.arange(pf, device=codes.device) * bits
    return _to_int32((grouped << shifts).sum(-1))


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """``[R, N]`` words packed along rows -> ``[R * pf, N]`` codes (row ``pf*r + s`` in slot ``s``)."""
    return unpack_cols(packed.T.contiguous(), bits).T.contiguous()


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    return pack_cols(codes.T.contiguous(), bits).T.contiguous()


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AWQ gemm: qweight ``[K, N/8]``, qzeros ``[G, N/8]`` -> codes ``[K, N]``, true zeros ``[G, N]``."""
    return unpack_cols(qweight, 4, AWQ_ORDER), unpack_cols(qzeros, 4, AWQ_ORDER)


def pack_awq(codes: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return pack_cols(codes, 4, AWQ_ORDER), pack_cols(zeros, 4, AWQ_ORDER)


def unpack_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, bits: int, v1: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ: qweight ``[K/pf, N]``, qzeros ``[G, N/pf]`` -> codes ``[K, N]``, true zeros ``[G, N]``.

    v1 zeros are stored minus one; the one is added after unpacking, in a wider type.
    """
    zeros = unpack_cols(qzeros, bits)
    return unpack_rows(qweight, bits), zeros + 1 if v1 else zeros


def pack_gptq(codes: torch.Tensor, zeros: torch.Tensor, bits: int, v1: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return pack_rows(codes, bits), pack_cols(zeros - 1 if v1 else zeros, bits)


def unpack_layer(qweight: torch.Tensor, qzeros: torch.Tensor, num_inputs: int, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``[K, N]`` and true zeros ``[G, N]`` of a loaded layer (AWQ gemm, or GPTQ with v2 zeros).

    For GPTQ, K = ``num_inputs`` tells the bits (32 / rows per packed word).
    """
    if fmt == "awq":
        return unpack_awq(qweight, qzeros)
    if fmt == "gptq":
        return unpack_gptq(qweight, qzeros, 32 * qweight.shape[0] // num_inputs, v1=False)
    raise ValueError(f"fmt must be 'awq' or 'gptq', got {fmt!r}")
