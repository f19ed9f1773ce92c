"""Read a GGUF file with the ``gguf`` package through transformers' GGUF name and config mapping.

transformers undoes llama.cpp's per-head permutation of q/k rows, so the tensors come back
in Hugging Face names and layout, dequantized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_gguf(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """The Hugging Face config and the dequantized fp32 state dict of a GGUF file."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    with torch.device("meta"):  # only the parameter names are needed for the mapping
        skeleton = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
    return config, tensors


def load_gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def convert_gguf_to_folder(path: Path, folder: Path) -> None:
    """Write config.json, model.safetensors and the tokenizer files of a GGUF model into ``folder``."""
    from safetensors.torch import save_file

    config, tensors = load_gguf(path)
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(folder / "model.safetensors"))
    load_gguf_tokenizer(path).save_pretrained(folder)
