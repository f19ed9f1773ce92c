"""Tensor parallelism on the CPU over gloo: the sharded model gives the unsharded one's greedy tokens, and a
rank that dies ends the engine with an error naming it, leaving no process behind."""

from __future__ import annotations

import os
import signal
import time

import pytest

from engine import LLM, EngineConfig, LLMEngine, SamplingParams
from engine.model.quant.checkpoint import quantize_folder_rtn
from engine.model.quant.format import QuantFormat
from engine.step.parallel_runner import RankFailed

PROMPTS = ["The capital of France is", "Write a haiku about tensors and the people who slice them.",
           "1, 2, 3, 4, 5,", "A long time ago, in a galaxy far, far away, there"]


def greedy(model: str, tp: int, **kwargs) -> tuple[list[list[int]], int]:
    """Greedy tokens of PROMPTS and the number of preemptions it took."""
    llm = LLM(model, dtype="float32", tensor_parallel_size=tp, enforce_eager=True, **kwargs)
    try:
        outputs = llm.generate(PROMPTS, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True),
                               use_tqdm=False)
        return [o.outputs[0].token_ids for o in outputs], llm.engine.stats().num_preemptions
    finally:
        llm.shutdown()


@pytest.mark.parametrize(("which", "num_kv_blocks"), [("default", 8), ("qwen3", 8), ("gemma3", 14), ("phi3", 5)])
def test_two_ranks_give_one_ranks_greedy_tokens_with_preemption_and_chunked_prefill(which, num_kv_blocks,
                                                                                      default_model,
                                                                                      tiny_model_factory):
    """The default model splits its 3 KV heads 2 + 1 and its 9 query heads 6 + 3; the tiny Qwen3 its 2 KV heads
    1 + 1 (with q/k norms); the tiny Gemma 3 and Phi-3 slide a 16-token window over their 40-token sequences
    (Phi-3 from fused checkpoint projections cut per rank). A pool of a few blocks of 8 tokens preempts
    (Gemma 3's hold one of its two layers each, Phi-3's sliding layers give back blocks behind the window),
    an 8-token budget chunks every prompt."""
    model = str(default_model if which == "default" else tiny_model_factory(which))
    tight = dict(max_model_len=64, block_size=8, num_kv_blocks=num_kv_blocks, max_num_batched_tokens=8)
    want, _ = greedy(model, 1, max_model_len=64)
    got, preemptions = greedy(model, 2, **tight)
    assert got == want and preemptions > 0


def test_a_vocabulary_that_does_not_divide_pads_the_last_ranks_rows(tiny_model_factory):
    model = str(tiny_model_factory("llama", vocab_size=49153))  # one row past a multiple of 64
    assert greedy(model, 2, max_model_len=64)[0] == greedy(model, 1, max_model_len=64)[0]


@pytest.mark.parametrize("spec", [QuantFormat("awq", 4, 32), QuantFormat("gptq", 4, 32, desc_act=True, v1_zeros=True),
                                  QuantFormat("gptq", 8, -1, sym=False)], ids=["awq", "gptq4-act-order", "gptq8"])
def test_packed_awq_and_gptq_layers_split_along_their_groups(spec, tiny_model_factory, tmp_path):
    """A packed layer is loaded whole and cut to the rank's share: whole packed words, and for the row-parallel
    layers the groups its inputs use (any act-order)."""
    folder = tmp_path / "quantized"
    quantize_folder_rtn(tiny_model_factory("qwen2", initializer_range=0.05), folder, spec)
    want, _ = greedy(str(folder), 1, max_model_len=64)
    got, _ = greedy(str(folder), 2, max_model_len=64)
    assert got == want


def test_a_dead_rank_ends_the_engine_with_an_error_and_leaves_no_process(default_model):
    engine = LLMEngine(EngineConfig(model=str(default_model), dtype="float32", tensor_parallel_size=3,
                                    enforce_eager=True, max_model_len=64))
    workers = [w.pid for w in engine.runner.workers]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(str(index), prompt, SamplingParams(max_tokens=40, ignore_eos=True))
    engine.step()
    engine.step()
    os.kill(workers[0], signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(RankFailed, match=rf"rank 1 \(pid {workers[0]}, exit code -9\)"):
        while True:
            engine.step()
    assert time.monotonic() - started < 30
    engine.shutdown()
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
