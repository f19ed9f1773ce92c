"""The engine on the Triton kernels (interpreter on a CPU) gives the reference path's greedy tokens."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_forced_triton_kernels_match_the_reference_path(tiny_model_factory, arch):
    model = str(tiny_model_factory(arch))
    prompts = ["Hello there", "A longer prompt, with several more words in it than the first"]
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    reference = LLM(model, max_model_len=128, block_size=8, dtype="float32", kernels="torch", enforce_eager=True)
    want = [o.outputs[0].token_ids for o in reference.generate(prompts, params, use_tqdm=False)]
    triton = LLM(model, max_model_len=128, block_size=8, dtype="float32", kernels="triton")
    assert [o.outputs[0].token_ids for o in triton.generate(prompts, params, use_tqdm=False)] == want
    # Mixed steps: one prompt is prefilled in chunks while the other decodes.
    chunked = LLM(model, max_model_len=128, block_size=8, max_num_batched_tokens=8, dtype="float32", kernels="triton")
    assert [o.outputs[0].token_ids for o in chunked.generate(prompts, params, use_tqdm=False)] == want
