"""config.json and tokenizer written from a GGUF file's metadata, against transformers' conversion of
the same file: the default model's, and small byte-level vocabularies written here with each
pre-tokenizer we handle (the digits, Llama 3 and Qwen2 splits, BOS added or not)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from parity import assert_same_tokenizer
from transformers import AutoConfig, AutoTokenizer

from engine.model.loader import ModelSource
from engine.model.loader.gguf_metadata import write_metadata
from engine.model.loader.resolve import default_gguf_file
from engine.processing.tokenizer import load_tokenizer

TEXTS = ["Hello world", "12345 and 2026", "<|im_start|>user\nhi<|im_end|>", "naïve café 日本語 🎉", "  two  spaces\n\n",
         "don't I'll THEY'VE", "<|endoftext|> after", "x=1234567;\ty\r\n", "<think>a</think>"]
ENGINE_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
                 "hidden_act", "attention_bias", "tie_word_embeddings", "bos_token_id", "eos_token_id")


def ours(path: Path, folder: Path):
    assert write_metadata(path, folder)
    return load_tokenizer(ModelSource(folder, False, "m", folder))


def test_the_default_model_converts_as_transformers_converts_it(tmp_path):
    path = default_gguf_file()
    assert_same_tokenizer(ours(path, tmp_path), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name), TEXTS)
    config = json.loads((tmp_path / "config.json").read_text())
    reference = AutoConfig.from_pretrained(path.parent, gguf_file=path.name).to_dict()
    assert {field: config[field] for field in ENGINE_FIELDS} == {field: reference[field] for field in ENGINE_FIELDS}
    assert config["rope_theta"] == reference["rope_parameters"]["rope_theta"]


def byte_level_file(path: Path, pre: str, add_bos: bool) -> Path:
    """A Llama-shaped GGUF (no tensors) whose vocabulary is the 256 byte spellings, some merges of
    words and digits, three control tokens and a user-defined one."""
    alphabet = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)] + [chr(c) for c in range(174, 256)]
    alphabet += [chr(256 + i) for i in range(256 - len(alphabet))]
    merges = ["Ġ w", "o r", "l d", "Ġw or", "Ġwor ld", "H e", "He l", "Hel l", "Hell o", "1 2", "12 3", "Ġ t", "h e",
              "' s", "Ġ 2", "Ġ2 0"]
    words = [merge.replace(" ", "") for merge in merges]
    control = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = control + alphabet + words + ["<think>", "</think>"]
    types = [3] * len(control) + [1] * (len(tokens) - len(control) - 2) + [4, 4]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("pre", "add_bos"), [("llama-bpe", True), ("qwen2", False), ("gpt2", True)])
def test_byte_level_vocabularies_convert_as_transformers_converts_them(tmp_path, pre, add_bos):
    path = byte_level_file(tmp_path / "tiny.gguf", pre, add_bos)
    (tmp_path / "meta").mkdir()
    mine = ours(path, tmp_path / "meta")
    assert_same_tokenizer(mine, AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name), TEXTS)
    assert (mine.encode("Hello")[0] == 1) == add_bos


def test_smollm_splits_digits_as_llama_cpp_does(tmp_path):
    """llama.cpp's "smollm" pre-tokenizer (and SmolLM2's own tokenizer.json) puts each digit alone;
    transformers' GGUF conversion does not, and would merge "123" where the vocabulary has it."""
    path = byte_level_file(tmp_path / "tiny.gguf", "smollm", False)
    (tmp_path / "meta").mkdir()
    mine = ours(path, tmp_path / "meta")
    assert mine.convert_ids_to_tokens(mine.encode("12345 Hello")) == ["1", "2", "3", "4", "5", "Ġ", "Hello"]
    assert mine.convert_ids_to_tokens(mine.encode("Hello world")) == ["Hello", "Ġworld"]
    assert AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name).tokenize("12345")[0] == "123"


def test_other_vocabularies_are_left_to_transformers(tmp_path):
    path = byte_level_file(tmp_path / "tiny.gguf", "some-new-pre-tokenizer", False)
    (tmp_path / "meta").mkdir()
    assert not write_metadata(path, tmp_path / "meta")
    assert not any((tmp_path / "meta").iterdir())
