"""Iterate a model's weights as (Hugging Face name, tensor), whatever the file format."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from .resolve import ModelSource


def load_hf_config(source: ModelSource):
    from transformers import AutoConfig

    if source.is_gguf:
        return AutoConfig.from_pretrained(source.path.parent, gguf_file=source.path.name)
    return AutoConfig.from_pretrained(source.path)


def iter_weights(source: ModelSource) -> Iterator[tuple[str, torch.Tensor]]:
    if source.is_gguf:
        from .gguf import load_gguf

        yield from load_gguf(source.path)[1].items()
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
