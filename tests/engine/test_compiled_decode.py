"""The compiled CPU decode step: the same greedy tokens as the eager path, and no recompiles.

The compiled and eager engines run the same requests through preemption (a small KV pool) and
chunked prefill (a small step budget); a bf16 model with 4-bit layers adds the low-bit batch
ranges. After start-up no batch size or context length compiles another graph.
"""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from engine.model.quant.checkpoint import quantize_folder_rtn
from engine.model.quant.format import QuantFormat
from engine.model.quant.lowbit import cpu_int4_available

PROMPTS = ["Hi", "The capital of France is", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,",
           "def add(a, b):\n    return", "Once upon a time " * 12, "Q: What is 12 times 7?\nA:", "x", "y z"]
OPTIONS = dict(max_model_len=128, num_kv_blocks=20, block_size=8, max_num_batched_tokens=24)


def _greedy(llm: LLM, count: int = len(PROMPTS)) -> list[list[int]]:
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    prompts = (PROMPTS * 3)[:count]
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_compiled_and_eager_decode_give_the_same_tokens(arch, tiny_model_factory):
    folder = str(tiny_model_factory(arch))
    compiled = LLM(folder, dtype="float32", **OPTIONS)
    eager = LLM(folder, dtype="float32", enforce_eager=True, **OPTIONS)
    assert compiled.engine.runner.compiled_decode is not None and eager.engine.runner.compiled_decode is None
    assert _greedy(compiled) == _greedy(eager)
    assert compiled.engine.scheduler.num_preemptions > 0  # the pool cannot hold every sequence at once
    assert compiled.engine.scheduler.block_manager.num_used_blocks == 0


def _assert_within_bf16_noise(compiled, eager, label: str) -> None:
    """Same greedy tokens up to a first divergence, which must be a near-tie under eager's log-probs
    (bf16 rounds differently fused and unfused); chosen-token log-probs agree until then."""
    for step, (mine, theirs) in enumerate(zip(compiled.token_ids, eager.token_ids)):
        ranked = eager.logprobs[step]
        if mine != theirs:
            assert mine in ranked and ranked[theirs].logprob - ranked[mine].logprob < 0.1, (label, step)
            return
        assert abs(compiled.logprobs[step][mine].logprob - ranked[theirs].logprob) < 0.1, (label, step)


@pytest.mark.skipif(not cpu_int4_available(), reason="this torch has no CPU int4 matmul")
def test_low_bit_batch_ranges_compile_at_start_up_and_never_again(tiny_model_factory, tmp_path):
    """bf16 with 4-bit layers: a graph for one sequence, one up to the int4 kernel's row limit, one beyond."""
    folder = tmp_path / "awq"
    quantize_folder_rtn(tiny_model_factory("llama"), folder, QuantFormat("awq", 4, 32))
    compiled = LLM(str(folder), dtype="bfloat16", max_model_len=256, max_num_seqs=32)
    graphs = compiled.engine.runner.compiled_decode.num_graphs
    assert graphs == 3
    eager = LLM(str(folder), dtype="bfloat16", max_model_len=256, max_num_seqs=32, enforce_eager=True)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=5)
    for count in (1, 2, 3, 7, 16, 17, 24):  # batch sizes in and across every range; contexts up to ~130 tokens
        prompts = (PROMPTS * 3)[:count]
        ours, theirs = (llm.generate(prompts, params, use_tqdm=False) for llm in (compiled, eager))
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_within_bf16_noise(a.outputs[0], b.outputs[0], f"batch {count}, prompt {i}")
    assert compiled.engine.runner.compiled_decode.num_graphs == graphs
