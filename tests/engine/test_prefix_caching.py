"""Prefix caching and chunked prefill change how much is computed, never what is generated."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams

SYSTEM = ("You are a careful assistant. Answer briefly, cite the rule you used, and never invent facts. "
          "Rules: one, be kind; two, be exact; three, say when you do not know. ") * 3
QUESTIONS = ["What is two plus two?", "Name a primary colour.", "Spell 'cat' backwards.", "Is the sea salty?"]
PARAMS = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def _run_twice(llm: LLM) -> tuple[list[list[int]], list[int]]:
    """Generate for all prompts, then again (the second round can hit the cache): ids and cached counts."""
    prompts = [SYSTEM + q for q in QUESTIONS]
    first = llm.generate(prompts, PARAMS, use_tqdm=False)
    second = llm.generate(prompts, PARAMS, use_tqdm=False)
    ids = [o.outputs[0].token_ids for o in first + second]
    assert llm.engine.scheduler.block_manager.num_used_blocks == 0
    return ids, [o.num_cached_tokens for o in second]


@pytest.mark.parametrize("model", ["default", "tiny"])
def test_outputs_equal_with_caching_on_and_off_and_any_chunk_size(model, default_model, tiny_model_factory):
    path = str(default_model if model == "default" else tiny_model_factory("qwen2"))
    reference, cached = _run_twice(LLM(path, max_model_len=512, dtype="float32", enable_prefix_caching=False, enforce_eager=True))
    assert cached == [0, 0, 0, 0]
    # the default model only at the smallest budget (its runs are the slow ones; the tiny model takes all three)
    for chunk in (16, 64, None) if model == "tiny" else (16,):
        ids, cached = _run_twice(LLM(path, max_model_len=512, dtype="float32", max_num_batched_tokens=chunk, enforce_eager=True))
        assert ids == reference, f"chunk size {chunk}"
        assert all(c >= 16 * 5 for c in cached), cached  # the shared system prompt came from the cache


def test_shared_system_prompt_is_prefilled_once_within_a_batch(default_model):
    # Sequential arrivals: the first request's full blocks are cached when the next one is admitted.
    llm = LLM(str(default_model), max_model_len=512, dtype="float32", enforce_eager=True)
    outs = [llm.generate(SYSTEM + q, PARAMS, use_tqdm=False)[0] for q in QUESTIONS]
    assert outs[0].num_cached_tokens == 0 and all(o.num_cached_tokens > 0 for o in outs[1:])
    stats = llm.engine.stats()
    assert 0 < stats.prefix_cache_hits < stats.prefix_cache_queries


def test_caching_with_preemption_n2_and_abort_leaks_nothing(default_model):
    llm = LLM(str(default_model), max_model_len=256, dtype="float32", num_kv_blocks=16, max_num_batched_tokens=32,
              enforce_eager=True)
    reference = LLM(str(default_model), max_model_len=256, dtype="float32", enable_prefix_caching=False,
                    enforce_eager=True)
    params = SamplingParams(n=2, max_tokens=20, temperature=0.0, ignore_eos=True)
    prompts = [SYSTEM[:200] + q for q in QUESTIONS]
    got = llm.generate(prompts, params, use_tqdm=False)
    want = reference.generate(prompts, params, use_tqdm=False)
    assert [[c.token_ids for c in o.outputs] for o in got] == [[c.token_ids for c in o.outputs] for o in want]
    assert llm.engine.scheduler.num_preemptions > 0

    engine = llm.engine
    engine.add_request("gone", SYSTEM[:200] + "Tell me everything.", SamplingParams(n=2, max_tokens=50))
    for _ in range(3):
        engine.step()
    engine.abort("gone")
    engine.check_invariants()
    assert engine.scheduler.block_manager.num_used_blocks == 0


def test_prompt_logprobs_are_complete_when_the_prompt_is_cached(default_model):
    llm = LLM(str(default_model), max_model_len=512, dtype="float32", enforce_eager=True)
    prompt = SYSTEM + QUESTIONS[0]
    llm.generate(prompt, PARAMS, use_tqdm=False)  # warms the cache with this prompt's blocks
    out = llm.generate(prompt, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    assert len(out.prompt_logprobs) == len(out.prompt_token_ids) and out.num_cached_tokens == 0
    assert all(entry is not None for entry in out.prompt_logprobs[1:])
