"""Model resolution and loading: the default GGUF file read directly, errors for unusable paths, the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine import LLM, SamplingParams
from engine.model.loader.resolve import default_gguf_file, resolve_model


def test_gguf_file_loads_to_the_same_model_as_its_converted_folder(default_model):
    """In fp32 both are the dequantized weights; in the default (bf16, the file's own 4/8-bit blocks) the
    answer is still right."""
    prompts = ["The capital of France is", "1, 2, 3,"]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    from_gguf = LLM(str(default_gguf_file()), max_model_len=128, dtype="float32", enforce_eager=True).generate(prompts, params, use_tqdm=False)
    from_folder = LLM(str(default_model), max_model_len=128, dtype="float32", enforce_eager=True).generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in from_gguf] == [o.outputs[0].token_ids for o in from_folder]
    low_bit = LLM(max_model_len=128, enforce_eager=True).generate(prompts, params, use_tqdm=False)  # the default model is that file
    assert "Paris" in low_bit[0].outputs[0].text


def test_unusable_model_paths_raise_value_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.gguf"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(ValueError, match="config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ValueError, match="neither"):
        resolve_model(str(tmp_path / "missing" / "deeper"))


def test_max_model_len_beyond_the_model_context_is_rejected(tiny_model_factory):
    with pytest.raises(ValueError, match="max_model_len=100000"):
        LLM(str(tiny_model_factory("llama")), max_model_len=100000)


def test_kv_pool_smaller_than_one_context_is_rejected(tiny_model_factory):
    with pytest.raises(ValueError, match="max_model_len=512"):
        LLM(str(tiny_model_factory("llama")), num_kv_blocks=4, block_size=16)


def test_cli_generate_streams_text(tiny_model_factory):
    folder = tiny_model_factory("qwen2")
    done = subprocess.run(
        [sys.executable, "-m", "engine", "generate", "Hello", "--model", str(folder), "--max-tokens", "6", "--enforce-eager"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    llm = LLM(str(folder), enforce_eager=True)
    want = llm.generate("Hello", SamplingParams(max_tokens=6, temperature=0.0), use_tqdm=False)[0].outputs[0].text
    assert done.stdout == want + "\n"
    assert "tokens/s" in done.stderr


def test_cli_reports_bad_options_without_a_traceback(tiny_model_factory):
    done = subprocess.run(
        [sys.executable, "-m", "engine", "generate", "Hi", "--model", str(tiny_model_factory("qwen2")), "--block-size", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2 and "block_size" in done.stderr and "Traceback" not in done.stderr
