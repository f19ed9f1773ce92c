"""The compiled CPU decode step: served eagerly until its graphs are compiled in the background, then
switched over between two steps, with the same greedy tokens; loaded from the cache folder at once
on a later start, whatever the KV pool size or batch limit; and never compiling anything more.

Each test has a cache folder of its own, so it starts cold. The compiler process is paused
(SIGSTOP) where a test needs the eager phase to last: the order of events is forced, not timed.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from engine import LLM, SamplingParams
from engine.model.quant.checkpoint import quantize_folder_rtn
from engine.model.quant.format import QuantFormat
from engine.model.quant.lowbit import cpu_int4_available

PROMPTS = ["Hi", "The capital of France is", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,",
           "def add(a, b):\n    return", "Once upon a time " * 12, "Q: What is 12 times 7?\nA:", "x", "y z"]
OPTIONS = dict(max_model_len=128, block_size=8, max_num_batched_tokens=24)
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cache"))


def _greedy(llm: LLM, count: int = len(PROMPTS)) -> list[list[int]]:
    prompts = (PROMPTS * 3)[:count]
    return [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)]


def _dynamo_frames() -> int:
    return sum(torch._dynamo.utils.counters["frames"].values())


@pytest.mark.parametrize(("arch", "num_kv_blocks"), [("qwen2", 20), ("gemma3", 26)])
def test_compiled_and_eager_decode_give_the_same_tokens(arch, num_kv_blocks, tiny_model_factory):
    """Through preemption (a pool too small for all) and chunked prefill (a small step budget). Qwen2 has
    q/k/v biases; Gemma 3 q/k norms, sandwich norms, and sliding-window and global layers: two kinds of
    layer graph, each with its own rotary table, and two KV cache groups of one layer (blocks half the size).
    (Llama: the switch-over test below.)"""
    folder = str(tiny_model_factory(arch))
    options = {**OPTIONS, "num_kv_blocks": num_kv_blocks}
    compiled = LLM(folder, dtype="float32", **options)
    assert compiled.engine.runner.compiled_decode.wait(), compiled.engine.runner.compiled_decode.error
    eager = LLM(folder, dtype="float32", enforce_eager=True, **options)
    assert eager.engine.runner.compiled_decode is None
    assert _greedy(compiled) == _greedy(eager)
    assert compiled.engine.scheduler.num_preemptions > 0
    assert compiled.engine.scheduler.block_manager.num_used_blocks == 0


def test_a_request_in_flight_switches_to_the_compiled_graphs_with_the_same_tokens(tiny_model_factory):
    folder = str(tiny_model_factory("llama"))
    llm = LLM(folder, dtype="float32", max_model_len=128)
    compiled = llm.engine.runner.compiled_decode
    os.kill(compiled._process.pid, signal.SIGSTOP)  # the compiler waits until the request is well under way
    engine = llm.engine
    engine.add_request("r", PROMPTS[1], SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True))
    tokens = []
    for _ in range(10):
        tokens += [t for out in engine.step() for t in out.outputs[0].token_ids[len(tokens):]]
    assert compiled.graphs_ready == 0 and len(tokens) == 10  # so far: eager
    os.kill(compiled._process.pid, signal.SIGCONT)
    assert compiled.wait(), compiled.error
    assert compiled.full_speed and compiled.graphs_total == 2  # batches of one, and of more
    while engine.has_unfinished_requests():
        outputs = engine.step()
    assert outputs[0].finished and len(outputs[0].outputs[0].token_ids) == 40
    eager = LLM(folder, dtype="float32", max_model_len=128, enforce_eager=True)
    expected = eager.generate([PROMPTS[1]], SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True),
                              use_tqdm=False)[0].outputs[0].token_ids
    assert outputs[0].outputs[0].token_ids == expected


@pytest.mark.skipif(not cpu_int4_available(), reason="this torch has no CPU int4 matmul")
def test_low_bit_ranges_load_from_the_cache_whatever_the_pool_and_never_compile_again(tiny_model_factory, tmp_path):
    """bf16 with 4-bit layers: a graph for one sequence, one up to the int4 kernel's row limit, one beyond.
    A second engine with another KV pool size and batch limit loads them all at start-up; after that no
    batch size or context length traces or compiles anything."""
    folder = tmp_path / "awq"
    quantize_folder_rtn(tiny_model_factory("llama"), folder, QuantFormat("awq", 4, 32))
    first = LLM(str(folder), dtype="bfloat16", max_model_len=256, max_num_seqs=32)
    assert first.engine.runner.compiled_decode.wait(), first.engine.runner.compiled_decode.error
    assert first.engine.runner.compiled_decode.graphs_total == 3
    first.engine.shutdown()

    compiled = LLM(str(folder), dtype="bfloat16", max_model_len=256, max_num_seqs=24, num_kv_blocks=300)
    graphs = compiled.engine.runner.compiled_decode
    assert graphs.full_speed and graphs._process is None  # loaded, nothing to compile
    eager = LLM(str(folder), dtype="bfloat16", max_model_len=256, max_num_seqs=24, enforce_eager=True)
    frames = _dynamo_frames()
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=5)
    for count in (1, 2, 3, 7, 16, 17, 24):  # batch sizes in and across every range; contexts up to ~130 tokens
        prompts = (PROMPTS * 3)[:count]
        ours, theirs = (llm.generate(prompts, params, use_tqdm=False) for llm in (compiled, eager))
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_within_bf16_noise(a.outputs[0], b.outputs[0], f"batch {count}, prompt {i}")
    assert _dynamo_frames() == frames
    assert graphs.graphs_ready == graphs.graphs_total == 3


def _assert_within_bf16_noise(compiled, eager, label: str) -> None:
    """Same greedy tokens up to a first divergence, which must be a near-tie under eager's log-probs
    (bf16 rounds differently fused and unfused); chosen-token log-probs agree until then."""
    for step, (mine, theirs) in enumerate(zip(compiled.token_ids, eager.token_ids)):
        ranked = eager.logprobs[step]
        if mine != theirs:
            assert mine in ranked and ranked[theirs].logprob - ranked[mine].logprob < 0.1, (label, step)
            return
        assert abs(compiled.logprobs[step][mine].logprob - ranked[theirs].logprob) < 0.1, (label, step)
