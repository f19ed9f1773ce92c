"""A GGUF file's config.json and tokenizer files, written once into the engine's cache folder.

llama.cpp's converter keeps a model's config and tokenizer as metadata under its own key names.
For the decoders we run and byte-level BPE vocabularies (SmolLM2, Llama 3, Qwen), both are written
here straight from that metadata: ~0.1 s for the default model. Other tokenizers (SentencePiece
vocabularies, other pre-tokenizers) and the configs we do not write (Gemma's, scaled rotary embeddings)
are converted by transformers, whose reader (gguf-py) takes ~3 s per pass over the default model's
file, two passes, plus its imports. Phi-3's LongRoPE factors, tensors of the file, go into its
config's ``rope_scaling``.

The tokenizer follows llama.cpp, the reference for GGUF files: the text is split as its
pre-tokenizer type says, control tokens (type 3) are special tokens matched whole, user-defined
ones (type 4) are added tokens, and BOS is added where the file's ``add_bos_token`` says.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .gguf import iter_gguf_weights, read_index
from .snapshot import checkpoint_identity, sources_digest

# general.architecture -> (model_type, transformers class); llama.cpp files Mistral under "llama"
_ARCHITECTURES = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM"),
                  "qwen3": ("qwen3", "Qwen3ForCausalLM"), "phi3": ("phi3", "Phi3ForCausalLM")}
_MISTRAL = ("mistral", "MistralForCausalLM")

# tokenizer.ggml.pre -> how the text is split before BPE, from the models' own tokenizer.json
_GPT2 = "gpt2"  # GPT-2's split, inside the byte-level pre-tokenizer
_DIGITS = "digits"  # each digit alone, then GPT-2's split (SmolLM, StarCoder)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZERS = {
    "default": _GPT2, "gpt2": _GPT2,
    "smollm": _DIGITS, "refact": _DIGITS, "starcoder": _DIGITS,
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types
_SPECIAL_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                "pad_token": "padding_token_id"}


def gguf_metadata_folder(path: Path, cache: Path) -> Path:
    """config.json and tokenizer files of a GGUF file, converted once and cached by the file's
    identity (path, size, modification time) and the converting sources."""
    identity = [*checkpoint_identity([path]), sources_digest((Path(__file__).parent,))]
    key = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:16]
    folder = cache / "gguf-metadata" / f"{path.stem}-{key}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        staged = Path(tmp) / "meta"
        staged.mkdir()
        if not write_metadata(path, staged):
            _write_with_transformers(path, staged)
        try:
            os.replace(staged, folder)
        except OSError:  # another process cached the same file first
            if not (folder / "config.json").is_file():
                raise
    return folder


def write_metadata(path: Path, folder: Path) -> bool:
    """Write config.json, tokenizer.json, tokenizer_config.json (and chat_template.jinja) of ``path``
    into ``folder``; False, writing nothing, where the file is one for transformers to convert."""
    index = read_index(path, keep_arrays=True)
    metadata = index.metadata
    config = _config_with_rope_factors(path, index)
    tokenizer = tokenizer_from_metadata(metadata) if config is not None else None
    if tokenizer is None:
        return False
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokens = metadata["tokenizer.ggml.tokens"]
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                "model_max_length": config["max_position_embeddings"]}
    for name, key in _SPECIAL_IDS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None and 0 <= token_id < len(tokens):
            settings[name] = tokens[token_id]
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))
    if isinstance(metadata.get("tokenizer.chat_template"), str):
        (folder / "chat_template.jinja").write_text(metadata["tokenizer.chat_template"])
    return True


def config_from_metadata(metadata: dict, tensor_names: set[str]) -> dict | None:
    """A Hugging Face config.json for the decoders we run with the default rotary embedding, else None."""
    arch = metadata.get("general.architecture")
    if arch not in _ARCHITECTURES or metadata.get(f"{arch}.rope.scaling.type", "none") != "none":
        return None
    model_type, architecture = _ARCHITECTURES[arch]
    if arch == "llama" and "mistral" in str(metadata.get("general.name", "")).lower():
        model_type, architecture = _MISTRAL

    def setting(name: str, default=None):
        return metadata.get(f"{arch}.{name}", default)

    heads = setting("attention.head_count")
    hidden = setting("embedding_length")
    config = {
        "architectures": [architecture], "model_type": model_type,
        "vocab_size": len(metadata["tokenizer.ggml.tokens"]),
        "hidden_size": hidden, "intermediate_size": setting("feed_forward_length"),
        "num_hidden_layers": setting("block_count"), "num_attention_heads": heads,
        "num_key_value_heads": setting("attention.head_count_kv", heads),
        "head_dim": setting("attention.key_length") or setting("rope.dimension_count") or hidden // heads,
        "max_position_embeddings": setting("context_length"),
        "rms_norm_eps": setting("attention.layer_norm_rms_epsilon"),
        "rope_theta": setting("rope.freq_base", 10000.0), "rope_scaling": None,
        "hidden_act": "silu", "mlp_bias": False,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
    }
    if model_type == "mistral":
        config["sliding_window"] = setting("attention.sliding_window")
    if model_type == "phi3":  # its rope.dimension_count is the rotary part of a head (Phi-4-mini's: 3/4)
        head_dim = config["head_dim"] = setting("attention.key_length") or hidden // heads
        config["partial_rotary_factor"] = setting("rope.dimension_count", head_dim) / head_dim
        config["original_max_position_embeddings"] = setting("rope.scaling.original_context_length",
                                                             config["max_position_embeddings"])
        # as transformers applies it to the checkpoint (llama.cpp ignores Phi-3's window: its PR 13676)
        config["sliding_window"] = setting("attention.sliding_window") or None  # 0: none (Phi-4)
    return config


def _config_with_rope_factors(path: Path, index) -> dict | None:
    """``config_from_metadata``'s config, with Phi-3's LongRoPE factors (tensors of the file, which
    the weights skip) and the file's attention factor as its ``rope_scaling``."""
    config = config_from_metadata(index.metadata, {info.name for info in index.tensors})
    tensors = {info.name: info for info in index.tensors}
    if config is None or "rope_factors_long.weight" not in tensors:
        return config
    scaling = {"rope_type": "longrope", "long_factor": _floats(path, index, tensors["rope_factors_long.weight"]),
               "short_factor": _floats(path, index, tensors["rope_factors_short.weight"])}
    attention_factor = index.metadata.get(f"{index.metadata['general.architecture']}.rope.scaling.attn_factor")
    if attention_factor is not None:
        scaling["attention_factor"] = attention_factor
    config["rope_scaling"] = scaling
    return config


def _floats(path: Path, index, info) -> list[float]:
    """An F32 or F16 tensor of the file as a list."""
    import numpy as np

    dtype = {0: np.float32, 1: np.float16}[info.ggml_type]
    count = int(np.prod(info.shape, dtype=np.int64))
    return np.fromfile(path, dtype, count, offset=index.data_offset + info.offset).astype(np.float64).tolist()


def tokenizer_from_metadata(metadata: dict):
    """The byte-level BPE tokenizer a "gpt2" vocabulary with a known pre-tokenizer describes, else None."""
    split = _PRE_TOKENIZERS.get(metadata.get("tokenizer.ggml.pre", "default"))
    if metadata.get("tokenizer.ggml.model") != "gpt2" or split is None or "tokenizer.ggml.merges" not in metadata:
        return None
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges,
                                     fuse_unk=False, byte_fallback=False))
    if split == _GPT2:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif split == _DIGITS:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    types = metadata.get("tokenizer.ggml.token_type") or []
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    # a control token spelled outside the byte alphabet is a converter's mislabel, not a token to match
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                  for token, kind in zip(tokens, types) if kind == _CONTROL and set(token) <= alphabet])
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                          for token, kind in zip(tokens, types) if kind == _USER_DEFINED])
    bos_id = metadata.get("tokenizer.ggml.bos_token_id")
    if metadata.get("tokenizer.ggml.add_bos_token") and bos_id is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos_id]} $A", pair=f"{tokens[bos_id]} $A {tokens[bos_id]} $B",
            special_tokens=[(tokens[bos_id], bos_id)])
    return tokenizer


def _write_with_transformers(path: Path, folder: Path) -> None:
    """transformers' tokenizer, and its config where we write none (transformers' own drops Phi-3's
    partial rotary factor, LongRoPE, original context and window)."""
    from transformers import AutoConfig, AutoTokenizer

    config = _config_with_rope_factors(path, read_index(path, keep_arrays=True))
    if config is None:
        AutoConfig.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(folder)
    else:
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(folder)


def convert_gguf_to_folder(path: Path, folder: Path, cache: Path) -> None:
    """A Hugging Face folder (config, dequantized fp32 model.safetensors, tokenizer) of a GGUF model."""
    import shutil

    import torch
    from safetensors.torch import save_file

    meta = gguf_metadata_folder(path, cache)
    shutil.copytree(meta, folder)
    config = json.loads((meta / "config.json").read_text())
    tensors = {name: (t if isinstance(t, torch.Tensor) else t.dequantize()).contiguous()
               for name, t in iter_gguf_weights(path)}
    if config.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(folder / "model.safetensors"))
