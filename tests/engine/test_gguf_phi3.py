"""Phi-3 / Phi-4 GGUF files, written as llama.cpp's converter (Phi3MiniModel) writes them: q, k and v fused
in ``attn_qkv``, gate and up fused in ``ffn_up``, neither permuted, the rotary part of a head as
``rope.dimension_count`` and LongRoPE's factors as tensors. Greedy tokens equal transformers' (fp32) on
the weights as the file stores them: a Phi-4-mini shape (byte-level vocabulary, LongRoPE on 3/4 of each
head served past its original context, tied embeddings, Q8_0) and a Phi-3-mini one (SentencePiece
vocabulary, left to transformers, a sliding window shorter than the prompts, F16)."""

from __future__ import annotations

import json
import math

import gguf
import numpy as np
import torch
from parity import assert_greedy_match, hf_greedy
from transformers import AutoModelForCausalLM, Phi3Config

from engine import LLM, SamplingParams
from engine.model.loader.resolve import resolve_model

MAX_NEW_TOKENS = 24
ORIGINAL_CONTEXT = 16  # the LongRoPE model's: every prompt is longer, so transformers takes the long factors too
MAX_MODEL_LEN = 128


def byte_level_vocabulary(writer: gguf.GGUFWriter) -> int:
    """Phi-4's kind of vocabulary: byte-level BPE (the 256 byte spellings, a few merges, control tokens)."""
    alphabet = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)] + [chr(c) for c in range(174, 256)]
    alphabet += [chr(256 + i) for i in range(256 - len(alphabet))]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    control = ["<|endoftext|>", "<|user|>", "<|end|>"]
    tokens = control + alphabet + [merge.replace(" ", "") for merge in merges]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(control) + [1] * (len(tokens) - len(control)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    return len(tokens)


def sentencepiece_vocabulary(writer: gguf.GGUFWriter) -> int:
    """Phi-3-mini's kind: SentencePiece ("llama") with byte fallback, scores and control tokens."""
    pieces = ["▁", "▁t", "he", "▁the", "▁a", "in", "▁in"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + ["<|user|>", "<|end|>"]
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 259 + [-1.0 - i for i in range(len(pieces))] + [-1000.0] * 2)
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(pieces) + [3, 3])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    return len(tokens)


def phi3_file(path, vocabulary, config_args: dict, qtype: gguf.GGMLQuantizationType):
    """A random two-layer Phi-3 written to ``path`` as llama.cpp converts it, and the transformers model
    holding the weights as stored (``qtype`` for the matrices, F32 for the rest, as llama.cpp keeps them)."""
    writer = gguf.GGUFWriter(str(path), "phi3")
    vocab_size = vocabulary(writer)
    torch.manual_seed(0)
    config = Phi3Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2, pad_token_id=None,
                        architectures=["Phi3ForCausalLM"], **config_args)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    rope = config.rope_parameters
    writer.add_context_length(config.max_position_embeddings)
    writer.add_rope_scaling_orig_ctx_len(config.original_max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(int(rope["partial_rotary_factor"] * config.hidden_size) // config.num_attention_heads)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_sliding_window(config.sliding_window or 0)
    if rope["rope_type"] == "longrope":
        scale = config.max_position_embeddings / config.original_max_position_embeddings
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(config.original_max_position_embeddings)))
        writer.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
        writer.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI3, config.num_hidden_layers)
    with torch.no_grad():
        for name, parameter in model.state_dict().items():
            if config.tie_word_embeddings and name == "lm_head.weight":
                continue
            weight = parameter.numpy()
            if weight.ndim == 1:
                writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), weight)
                continue
            if qtype == gguf.GGMLQuantizationType.F16:
                stored = weight.astype(np.float16)
                parameter.copy_(torch.from_numpy(stored.astype(np.float32)))
            else:
                stored = gguf.quants.quantize(weight, qtype)
                parameter.copy_(torch.from_numpy(gguf.quants.dequantize(stored, qtype)))
            writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), stored, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def assert_matches_transformers(path, model) -> None:
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, model.config.vocab_size, (n,), generator=generator).tolist() for n in (17, 30, 41)]
    llm = LLM(str(path), dtype="float32", max_model_len=MAX_MODEL_LEN)
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    identical = [assert_greedy_match(out.outputs[0].token_ids, hf_greedy(model, ids, MAX_NEW_TOKENS), f"prompt {i}")
                 for i, (out, ids) in enumerate(zip(outputs, prompts))]
    assert sum(identical) >= len(identical) - 1, f"only {sum(identical)} of {len(identical)} identical"


def test_phi4_mini_shaped_file_with_longrope_and_q8_0_matches_transformers(tmp_path):
    factors = torch.Generator().manual_seed(2)
    scaling = {"rope_type": "longrope", "short_factor": (1 + torch.rand(6, generator=factors)).tolist(),
               "long_factor": (1 + 7 * torch.rand(6, generator=factors)).tolist()}
    model = phi3_file(tmp_path / "phi4-mini.gguf", byte_level_vocabulary,
                      {"max_position_embeddings": 256, "original_max_position_embeddings": ORIGINAL_CONTEXT,
                       "partial_rotary_factor": 0.75, "rope_scaling": scaling, "tie_word_embeddings": True},
                      gguf.GGMLQuantizationType.Q8_0)
    config = json.loads((resolve_model(str(tmp_path / "phi4-mini.gguf")).meta_path / "config.json").read_text())
    assert config["partial_rotary_factor"] == 0.75 and config["tie_word_embeddings"]
    assert config["original_max_position_embeddings"] == ORIGINAL_CONTEXT and config["sliding_window"] is None
    assert config["rope_scaling"]["rope_type"] == "longrope"
    for kind in ("long_factor", "short_factor"):
        np.testing.assert_allclose(config["rope_scaling"][kind], scaling[kind], rtol=1e-6)
    assert_matches_transformers(tmp_path / "phi4-mini.gguf", model)


def test_phi3_mini_shaped_file_with_a_sentencepiece_vocabulary_and_a_window_matches_transformers(tmp_path):
    model = phi3_file(tmp_path / "phi3-mini.gguf", sentencepiece_vocabulary,
                      {"max_position_embeddings": MAX_MODEL_LEN, "partial_rotary_factor": 0.5, "sliding_window": 16},
                      gguf.GGMLQuantizationType.F16)
    config = json.loads((resolve_model(str(tmp_path / "phi3-mini.gguf")).meta_path / "config.json").read_text())
    assert config["partial_rotary_factor"] == 0.5 and config["sliding_window"] == 16 and not config["tie_word_embeddings"]
    assert_matches_transformers(tmp_path / "phi3-mini.gguf", model)
