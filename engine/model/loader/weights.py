"""Iterate a model's weights as (Hugging Face name, tensor), whatever the file format.

GGUF tensors stored in 4- or 8-bit blocks come as low-bit groups (``engine.model.quant.lowbit``), the
rest as tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from engine.model.quant.lowbit import LowBitGroups

from .gguf import iter_gguf_weights
from .resolve import ModelSource


def iter_weights(source: ModelSource) -> Iterator[tuple[str, torch.Tensor | LowBitGroups]]:
    if source.is_gguf:
        yield from iter_gguf_weights(source.path)
        return
    yield from iter_safetensors(source.path)


def iter_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model folder {folder} has no .safetensors files")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
