"""GGUF files: tensors read straight from the file, 4- and 8-bit blocks kept as blocks.

The metadata and tensor index are parsed here (gguf-py's reader turns every tokenizer string into
a numpy view: ~3 s for the default model, where this takes 0.1 s); gguf_metadata.py writes the
config and tokenizer from them. Q4_0, Q4_1, Q4_K (an affine group-32 int4 exactly), Q5_0, Q5_1,
Q5_K and Q6_K (int8 codes, with an affine offset for Q5_1/Q5_K, exactly) and Q8_0 tensors come back
as ``Int4Groups`` / ``Int8Groups``, the stored codes with their per-group parameters; every other
type (Q2_K, Q3_K, ...) is dequantized by the ``gguf`` package. llama.cpp's converter permutes the rows
of the q/k projections of "llama" models for its rotary layout; they are permuted back here, as
transformers does.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from engine.model.quant.lowbit import Int4Groups, Int8Groups, LowBitGroups

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAGIC = b"GGUF"

_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
# Gemma's norms around attention and the MLP ("sandwich"): llama.cpp's ffn_norm is the pre-MLP norm
_GEMMA_LAYER_NAMES = {**_LAYER_NAMES, "post_attention_norm": "post_attention_layernorm",
                      "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
_GEMMA_ARCHITECTURES = {"gemma2", "gemma3"}  # llama.cpp's converter stores their norm weights as 1 + w
# Phi-3's fused projections as in its checkpoints (q, k, v rows; gate rows, then up ones), not permuted
# (llama.cpp's "phi3" rotates NeoX-style, halves of a head as transformers does): the decoder cuts them
_PHI3_LAYER_NAMES = {**_LAYER_NAMES, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}
# llama 3 frequency factors and Phi-3's LongRoPE ones: the rotary table comes from the config's rope
# settings (gguf_metadata.py writes LongRoPE's factors there)
_SKIPPED = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order: the slowest dimension first
    ggml_type: int
    offset: int  # from the start of the data section


@dataclass(frozen=True)
class GGUFIndex:
    metadata: dict  # scalar and string settings; arrays (the vocabulary) only where asked for
    tensors: list[TensorInfo]
    data_offset: int


class _Cursor:
    def __init__(self, buffer) -> None:
        self.buffer, self.pos = buffer, 0

    def unpack(self, fmt: str):
        value = struct.unpack_from(fmt, self.buffer, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.unpack("<Q")
        text = bytes(self.buffer[self.pos : self.pos + size]).decode("utf-8", errors="replace")
        self.pos += size
        return text

    def value(self, kind: int, keep_arrays: bool = False):
        """The value of type ``kind``; arrays are skipped (``None``) unless ``keep_arrays``."""
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.unpack("<I"), self.unpack("<Q")
            if item_kind in _SCALARS:
                width = struct.calcsize(_SCALARS[item_kind])
                start, self.pos = self.pos, self.pos + count * width
                if not keep_arrays:
                    return None
                return np.frombuffer(self.buffer, np.dtype(_SCALARS[item_kind]), count, start).tolist()
            items = [self.value(item_kind, keep_arrays) for _ in range(count)]
            return items if keep_arrays else None
        if kind not in _SCALARS:
            raise ValueError(f"GGUF value type {kind} is unknown")
        return self.unpack(_SCALARS[kind])


def read_index(path: Path, keep_arrays: bool = False) -> GGUFIndex:
    """The file's settings and tensor index; with ``keep_arrays``, the arrays too (the vocabulary)."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        cursor = _Cursor(buffer)
        if bytes(buffer[:4]) != _MAGIC:
            raise ValueError(f"{path} is not a GGUF file")
        cursor.pos = 4
        version, num_tensors, num_kv = cursor.unpack("<I"), cursor.unpack("<Q"), cursor.unpack("<Q")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old (2 or later)")
        metadata = {}
        for _ in range(num_kv):
            key = cursor.string()
            value = cursor.value(cursor.unpack("<I"), keep_arrays)
            if value is not None:
                metadata[key] = value
        tensors = []
        for _ in range(num_tensors):
            name = cursor.string()
            dims = [cursor.unpack("<Q") for _ in range(cursor.unpack("<I"))]
            tensors.append(TensorInfo(name, tuple(reversed(dims)), cursor.unpack("<I"), cursor.unpack("<Q")))
        alignment = int(metadata.get("general.alignment", 32))
        data_offset = -(-cursor.pos // alignment) * alignment
    return GGUFIndex(metadata, tensors, data_offset)


def hf_name(gguf_name: str, arch: str = "llama") -> str:
    """The Hugging Face name of a GGUF tensor of one of our decoders (``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``)."""
    parts = gguf_name.split(".")
    layer_names = (_GEMMA_LAYER_NAMES if arch in _GEMMA_ARCHITECTURES else _PHI3_LAYER_NAMES if arch == "phi3"
                   else _LAYER_NAMES)
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in layer_names:
        return f"model.layers.{parts[1]}.{layer_names[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no place in a {arch} decoder")


def iter_gguf_weights(path: Path) -> Iterator[tuple[str, torch.Tensor | LowBitGroups]]:
    """(Hugging Face name, tensor or low-bit groups) for every tensor of the file."""
    import gguf

    index = read_index(path)
    arch = index.metadata.get("general.architecture", "")
    heads = {"attn_q": index.metadata.get(f"{arch}.attention.head_count"),
             "attn_k": index.metadata.get(f"{arch}.attention.head_count_kv")}
    heads["attn_k"] = heads["attn_k"] or heads["attn_q"]
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for info in index.tensors:
        if info.name in _SKIPPED:
            continue
        name = hf_name(info.name, arch)
        block_size, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(info.ggml_type)]
        rows = int(np.prod(info.shape[:-1], dtype=np.int64)) if len(info.shape) > 1 else 1
        row_bytes = info.shape[-1] // block_size * block_bytes
        start = index.data_offset + info.offset
        raw = np.asarray(data[start : start + rows * row_bytes]).reshape(rows, row_bytes)
        tensor = _decode(raw, info, gguf)
        kind = info.name.split(".")[2] if info.name.startswith("blk.") else ""
        if arch == "llama" and kind in heads and heads[kind]:
            tensor = _rows(tensor, _unpermute_rows(info.shape[0], heads[kind]))
        if arch in _GEMMA_ARCHITECTURES and name.endswith("norm.weight"):
            tensor = tensor - 1.0  # back to transformers' w (the model adds its offset as it loads)
        yield name, tensor


def _decode(raw: np.ndarray, info: TensorInfo, gguf) -> torch.Tensor | LowBitGroups:
    kind = gguf.GGMLQuantizationType(info.ggml_type)
    Q = gguf.GGMLQuantizationType
    decode = _LOW_BIT_DECODERS.get(kind.name)
    if decode is not None and len(info.shape) == 2:
        return decode(torch.from_numpy(raw.copy()))  # a copy: the file is mapped read-only
    values = gguf.quants.dequantize(raw, kind) if kind not in (Q.F32, Q.F16, Q.BF16) else raw.view(
        {Q.F32: np.float32, Q.F16: np.float16}.get(kind, np.uint16))
    tensor = torch.from_numpy(np.array(values))  # a copy: the file is mapped read-only
    if kind == Q.BF16:
        tensor = tensor.view(torch.bfloat16)
    return tensor.float().reshape(info.shape)


def _fp16(block_bytes: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` uint8 little-endian halves -> fp32 ``[...]``."""
    return block_bytes.contiguous().view(torch.float16).squeeze(-1).float()


def _int4_groups(raw: torch.Tensor, with_min: bool) -> Int4Groups:
    """Q4_0 blocks (fp16 d, 16 bytes) are ``d * (q - 8)``; Q4_1 (fp16 d, fp16 m, 16 bytes) ``d * q + m``.
    Byte j of a block holds element j in its low nibble and element j + 16 in its high one."""
    rows = raw.shape[0]
    blocks = raw.view(rows, -1, 20 if with_min else 18)
    scale = _fp16(blocks[..., 0:2])
    zero = _fp16(blocks[..., 2:4]) + 8 * scale if with_min else torch.zeros_like(scale)
    packed = blocks[..., -16:]
    codes = torch.cat((packed & 0xF, packed >> 4), dim=-1).reshape(rows, -1)
    return Int4Groups(codes, scale, zero)


def _int8_groups(raw: torch.Tensor) -> Int8Groups:
    """Q8_0 blocks: fp16 d, then 32 int8 codes; ``w = d * q``."""
    rows = raw.shape[0]
    blocks = raw.view(rows, -1, 34)
    return Int8Groups(blocks[..., 2:].contiguous().view(torch.int8).reshape(rows, -1), _fp16(blocks[..., 0:2]))


def _k_scales_and_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's twelve bytes ``[..., 12]`` -> the eight sub-blocks' 6-bit scales and mins, fp32
    ``[..., 8]`` each: sub-blocks 0-3 in the low six bits of bytes 0-3 (scales) and 4-7 (mins); 4-7 with
    their low four bits in the nibbles of bytes 8-11 (scale low, min high) and their top two in the top
    two bits of bytes 0-3 (scales) and 4-7 (mins)."""
    packed = packed.long()
    low, high = packed[..., 0:4], packed[..., 4:8]
    extra = packed[..., 8:12]
    scale = torch.cat((low & 63, (extra & 0xF) | ((low >> 6) << 4)), dim=-1).float()
    minimum = torch.cat((high & 63, (extra >> 4) | ((high >> 6) << 4)), dim=-1).float()
    return scale, minimum


def _k_low_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K's 128 code bytes ``[rows, blocks, 128]`` -> ``[rows, blocks, 256]`` nibbles: byte l of
    chunk c (32 bytes) holds element 64c + l in its low nibble and 64c + 32 + l in its high one."""
    chunks = packed.reshape(*packed.shape[:2], 4, 1, 32)
    return torch.cat((chunks & 0xF, chunks >> 4), dim=3).reshape(*packed.shape[:2], 256)


def _q4_k_groups(raw: torch.Tensor) -> Int4Groups:
    """Q4_K super-blocks of 256 (fp16 d and dmin, twelve bytes of 6-bit scales and mins for eight
    sub-blocks of 32, then 128 bytes of codes) are ``d * scale_j * q - dmin * min_j`` per sub-block:
    group-32 affine int4, ``zero = 8 * d * scale_j - dmin * min_j``."""
    rows = raw.shape[0]
    blocks = raw.view(rows, -1, 144)
    d, dmin = _fp16(blocks[..., 0:2]), _fp16(blocks[..., 2:4])
    scale, minimum = _k_scales_and_mins(blocks[..., 4:16])
    codes = _k_low_nibbles(blocks[..., 16:]).reshape(rows, -1)
    group_scale = (d[..., None] * scale).reshape(rows, -1)
    zero = (8 * d[..., None] * scale - dmin[..., None] * minimum).reshape(rows, -1)
    return Int4Groups(codes, group_scale, zero)


def _q5_k_groups(raw: torch.Tensor) -> Int8Groups:
    """Q5_K super-blocks of 256 (fp16 d and dmin, twelve bytes of 6-bit scales and mins as Q4_K's, 32
    bytes of high bits, 128 bytes of low nibbles as Q4_K's codes) are ``d * scale_j * q - dmin * min_j``
    per sub-block of 32, q in 0..31: int8 codes with ``scale = d * scale_j``, ``zero = -dmin * min_j``,
    exactly. Element 32 i + l's fifth bit is bit i of high byte l."""
    rows = raw.shape[0]
    blocks = raw.view(rows, -1, 176)
    d, dmin = _fp16(blocks[..., 0:2]), _fp16(blocks[..., 2:4])
    scale, minimum = _k_scales_and_mins(blocks[..., 4:16])
    high = blocks[..., 16:48].reshape(rows, -1, 1, 32)
    fifth = ((high >> torch.arange(8, dtype=torch.uint8)[:, None]) & 1) << 4  # [rows, blocks, i, l]
    codes = _k_low_nibbles(blocks[..., 48:]) | fifth.reshape(rows, -1, 256)
    group_scale = (d[..., None] * scale).reshape(rows, -1)
    zero = -(dmin[..., None] * minimum).reshape(rows, -1)
    return Int8Groups(codes.to(torch.int8).reshape(rows, -1), group_scale, zero)


def _five_bit_codes(blocks: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1's 4 bytes of high bits then 16 of low nibbles ``[rows, blocks, 20]`` -> codes 0..31
    ``[rows, blocks, 32]``: byte j holds elements j and j + 16; bit j of the high word is element j's fifth."""
    high_word = blocks[..., 0:4].contiguous().view(torch.int32).long()  # [rows, blocks, 1], little-endian
    fifth = ((high_word >> torch.arange(32)) & 1) << 4
    packed = blocks[..., 4:20].long()
    return torch.cat((packed & 0xF, packed >> 4), dim=-1) | fifth


def _q5_0_groups(raw: torch.Tensor) -> Int8Groups:
    """Q5_0 blocks (fp16 d, 32 high bits, 16 bytes of low nibbles) are ``d * (q - 16)``: int8 codes in
    -16..15, exactly."""
    rows = raw.shape[0]
    blocks = raw.view(rows, -1, 22)
    codes = _five_bit_codes(blocks[..., 2:22]) - 16
    return Int8Groups(codes.to(torch.int8).reshape(rows, -1), _fp16(blocks[..., 0:2]))


def _q5_1_groups(raw: torch.Tensor) -> Int8Groups:
    """Q5_1 blocks (fp16 d, fp16 m, 32 high bits, 16 bytes of low nibbles as Q5_0's) are ``d * q + m``,
    q in 0..31: int8 codes with ``scale = d``, ``zero = m``, exactly."""
    rows = raw.shape[0]
    blocks = raw.view(rows, -1, 24)
    codes = _five_bit_codes(blocks[..., 4:24])
    return Int8Groups(codes.to(torch.int8).reshape(rows, -1), _fp16(blocks[..., 0:2]), _fp16(blocks[..., 2:4]))


def _q6_k_groups(raw: torch.Tensor) -> Int8Groups:
    """Q6_K super-blocks of 256 (128 bytes of low nibbles, 64 of high bit pairs, sixteen int8 scales, fp16
    d) are ``d * scale_j * (q - 32)`` per 16 elements: int8 codes in -32..31 with group-16 scales, exactly.
    Each half of 128 elements takes 64 low bytes and 32 high ones; element 32 i + l of a half has byte
    l (i even) or l + 32 (i odd) of the low ones, its low (i < 2) or high nibble, and bits 2 i of high byte l."""
    rows = raw.shape[0]
    blocks = raw.view(rows, -1, 210)
    low = blocks[..., 0:128].reshape(rows, -1, 2, 2, 32).long()  # [.., half, byte l or l + 32, l]
    high = blocks[..., 128:192].reshape(rows, -1, 2, 1, 32).long()
    nibbles = torch.stack((low[..., 0, :] & 0xF, low[..., 1, :] & 0xF, low[..., 0, :] >> 4, low[..., 1, :] >> 4), dim=3)
    pairs = (high >> (2 * torch.arange(4)[:, None])) & 3  # [.., half, i, l]
    codes = (nibbles | (pairs << 4)) - 32
    scales = blocks[..., 192:208].contiguous().view(torch.int8).float() * _fp16(blocks[..., 208:210])[..., None]
    return Int8Groups(codes.to(torch.int8).reshape(rows, -1), scales.reshape(rows, -1))


# ggml types kept low-bit -> their decoder (every other type is dequantized)
_LOW_BIT_DECODERS = {
    "Q4_0": lambda raw: _int4_groups(raw, with_min=False), "Q4_1": lambda raw: _int4_groups(raw, with_min=True),
    "Q4_K": _q4_k_groups, "Q5_0": _q5_0_groups, "Q5_1": _q5_1_groups, "Q5_K": _q5_k_groups,
    "Q6_K": _q6_k_groups, "Q8_0": _int8_groups,
}


def _unpermute_rows(num_rows: int, num_heads: int) -> torch.Tensor:
    """Row ``i`` of the Hugging Face weight is row ``index[i]`` of llama.cpp's (its rotary pairs interleaved)."""
    return torch.arange(num_rows).reshape(num_heads, num_rows // num_heads // 2, 2).transpose(1, 2).reshape(-1)


def _rows(tensor: torch.Tensor | LowBitGroups, index: torch.Tensor) -> torch.Tensor | LowBitGroups:
    return tensor[index] if isinstance(tensor, torch.Tensor) else tensor.rows(index)
