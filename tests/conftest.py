"""Shared fixtures: the default model folder and tiny random-weight models saved by transformers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# `python -m pytest` puts the repo root first on sys.path, where kernels/ would shadow Hugging Face's
# `kernels` (which transformers imports); importing engine puts the root last (engine/import_path.py),
# where benchmarks/ stays reachable.
import engine  # noqa: F401

# Triton kernels run under the interpreter where there is no GPU; it must be chosen before the
# first kernel is defined (engine.kernels.dispatch imports the Triton modules lazily, after this).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from engine.model.loader.resolve import default_model_folder

MODEL_FILES = ("config.json", "model.safetensors")  # everything else in the folder is tokenizer files


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The default model as a local folder (fetched and converted once per machine)."""
    return default_model_folder()


def _tiny_config(arch: str, vocab_size: int, initializer_range: float):
    """A two-layer config of ``arch``; ``-window`` variants slide a 16-token window over the prompts (on
    both layers for Mistral and Phi-3, on the second for Qwen2; Gemma's first layer slides anyway).
    ``phi3-longrope`` was "pretrained" on 512 tokens (the parity prompts fit) and extended to 4096: served
    at 512 tokens or less, the engine takes the short factors, as transformers does there."""
    from transformers import (Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config,
                              Qwen3Config)

    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=initializer_range, tie_word_embeddings=False, eos_token_id=2, bos_token_id=1,
    )
    gemma = dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=16)
    if arch == "llama":
        return LlamaConfig(**common, architectures=["LlamaForCausalLM"])
    if arch in ("mistral", "mistral-window"):
        return MistralConfig(**common, sliding_window=16 if arch.endswith("window") else None,
                             architectures=["MistralForCausalLM"])
    if arch in ("qwen2", "qwen2-window"):
        window = dict(use_sliding_window=True, sliding_window=16, max_window_layers=1) if arch.endswith("window") else {}
        return Qwen2Config(**common, **window, architectures=["Qwen2ForCausalLM"])
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=32, architectures=["Qwen3ForCausalLM"])
    if arch == "gemma2":  # caps low enough to bite on random weights
        return Gemma2Config(**{**common, **gemma}, attn_logit_softcapping=5.0, final_logit_softcapping=10.0,
                            architectures=["Gemma2ForCausalLM"])
    if arch == "gemma3":
        return Gemma3TextConfig(**{**common, **gemma}, layer_types=["sliding_attention", "full_attention"],
                                rope_theta=1e6, rope_local_base_freq=1e4, architectures=["Gemma3ForCausalLM"])
    if arch == "phi3":
        return Phi3Config(**common, sliding_window=16, partial_rotary_factor=0.5, architectures=["Phi3ForCausalLM"])
    if arch == "phi3-longrope":  # Phi-3.5 / Phi-4-mini: LongRoPE over 3/4 of each head, tied embeddings
        factors = torch.Generator().manual_seed(1)
        scaling = {"rope_type": "longrope", "short_factor": (1 + torch.rand(6, generator=factors)).tolist(),
                   "long_factor": (1 + 7 * torch.rand(6, generator=factors)).tolist()}
        return Phi3Config(**{**common, "max_position_embeddings": 4096, "tie_word_embeddings": True},
                          original_max_position_embeddings=512, partial_rotary_factor=0.75,
                          rope_scaling=scaling, architectures=["Phi3ForCausalLM"])
    raise ValueError(arch)


@pytest.fixture(scope="session")
def tokenizer_folder() -> Path:
    """The default model's tokenizer files: from ``$ENGINE_TEST_TOKENIZER_DIR`` where set (a GPU lease,
    whose machine cannot fetch the model: see benchmarks/prepare_device.sh), else the model's folder."""
    carried = os.environ.get("ENGINE_TEST_TOKENIZER_DIR")
    return Path(carried) if carried else default_model_folder()


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, tokenizer_folder):
    """``make(arch)`` -> folder of a random-weight model (safetensors) with the default model's tokenizer.

    ``initializer_range`` 0.2 gives peaked next-token distributions (few greedy near-ties);
    smaller values give smoother ones.
    """
    from transformers import AutoModelForCausalLM

    made: dict[str, Path] = {}

    def make(arch: str, initializer_range: float = 0.2, vocab_size: int = 49152) -> Path:
        key = f"{arch}-{initializer_range}" + ("" if vocab_size == 49152 else f"-v{vocab_size}")
        if key not in made:
            torch.manual_seed(0)
            config = _tiny_config(arch, vocab_size=vocab_size, initializer_range=initializer_range)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            folder = tmp_path_factory.mktemp(f"tiny-{key}")
            model.save_pretrained(folder, safe_serialization=True)
            for file in tokenizer_folder.iterdir():
                if file.name not in MODEL_FILES:
                    shutil.copy(file, folder / file.name)
            made[key] = folder
        return made[key]

    return make
