"""``batch_invariant=True`` in process, on tiny models in bf16: a request's tokens and log-probs are the same
alone, batched, in prefill chunks of any size, from the prefix cache and after preemption, sliding windows
and a hybrid KV cache included (tests/api/test_batch_invariance.py holds the served default model to it)."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams

PARAMS = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=1)


def prompts() -> list[dict]:
    return [{"prompt_token_ids": [(97 * i + 31 * j) % 4000 + 10 for j in range(length)]}
            for i, length in enumerate([5, 23, 40, 61, 17, 90])]


def answers(llm: LLM, batch: list[dict]) -> list[tuple[list[int], list[float]]]:
    outputs = llm.generate(batch, PARAMS, use_tqdm=False)
    assert llm.engine.scheduler.block_manager.num_used_blocks == 0
    return [(c.token_ids, [entry[t].logprob for entry, t in zip(c.logprobs, c.token_ids)])
            for c in (o.outputs[0] for o in outputs)]


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_a_request_gets_the_same_bits_alone_batched_chunked_cached_and_preempted(arch, tiny_model_factory):
    path = str(tiny_model_factory(arch))
    common = dict(dtype="bfloat16", batch_invariant=True, enforce_eager=True, max_model_len=256)
    llm = LLM(path, **common, enable_prefix_caching=False)
    alone = [answers(llm, [p])[0] for p in prompts()]
    assert answers(llm, prompts()) == alone
    chunked = LLM(path, **common, max_num_batched_tokens=16, max_num_seqs=16)
    assert answers(chunked, prompts()) == alone
    assert answers(chunked, prompts()) == alone  # the prompts' full blocks now come from the cache
    if arch == "qwen2":  # 8 blocks of 16 tokens for six requests of up to 102 tokens: preemption by recompute
        tight = LLM(path, **{**common, "max_model_len": 128}, num_kv_blocks=8, max_num_batched_tokens=32)
        assert answers(tight, prompts()) == alone
        assert tight.engine.scheduler.num_preemptions > 0


@pytest.mark.parametrize("setting, field", [({"kernels": "triton"}, "kernels"),
                                            ({"tensor_parallel_size": 2}, "tensor_parallel_size")])
def test_what_the_invariant_mode_does_not_cover_is_refused_by_name(setting, field, tiny_model_factory):
    with pytest.raises(ValueError, match=field):
        LLM(str(tiny_model_factory("qwen2")), batch_invariant=True, **setting)
