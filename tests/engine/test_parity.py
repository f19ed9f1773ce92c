"""Greedy token ids equal transformers' (fp32): the default model, tiny random models of every architecture,
with sliding windows shorter than most prompts."""

from __future__ import annotations

import pytest
import torch
from parity import assert_greedy_match, hf_greedy
from transformers import AutoConfig, AutoModelForCausalLM

from engine import LLM, SamplingParams

MAX_NEW_TOKENS = 48

PROMPTS = [
    "Hi",
    "The capital of France is",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List three colours of the rainbow:",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "Q: What is 12 times 7?\nA:",
    "Translate to French: The weather is lovely today.",
    # Long enough to fill many 16-token blocks.
    "Summarise the following text. " + " ".join(
        f"Sentence {i} says that paged attention stores keys and values in fixed-size blocks." for i in range(12)
    ),
    "def add(a, b):\n    return",
]


def _prompt_ids(llm: LLM) -> list[list[int]]:
    return [llm.get_tokenizer().encode(p) for p in PROMPTS]


def _ours(llm: LLM, prompt_ids: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def _references(folder, prompt_ids):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return [hf_greedy(model, ids, MAX_NEW_TOKENS) for ids in prompt_ids]


@pytest.fixture(scope="module")
def default_llm(default_model):
    return LLM(str(default_model), dtype="float32")


@pytest.fixture(scope="module")
def default_refs(default_llm, default_model):
    return _references(default_model, _prompt_ids(default_llm))


def _check(ours, refs, label):
    identical = [assert_greedy_match(o, r, f"{label} prompt {i}") for i, (o, r) in enumerate(zip(ours, refs))]
    # Near-ties are rare: most sequences must match to the last token.
    assert sum(identical) >= len(identical) - 1, f"{label}: only {sum(identical)} of {len(identical)} identical"


def test_default_model_matches_transformers(default_llm, default_refs):
    _check(_ours(default_llm, _prompt_ids(default_llm)), default_refs, "default")
    assert default_llm.engine.scheduler.block_manager.num_used_blocks == 0


def test_default_model_matches_under_preemption_and_chunking(default_model, default_llm, default_refs):
    # 24 blocks of 16 tokens cannot hold nine sequences of up to ~230 tokens at once, and a
    # 32-token step budget splits every long prompt into chunks.
    small = LLM(str(default_model), dtype="float32", num_kv_blocks=24, max_model_len=384, max_num_batched_tokens=32)
    _check(_ours(small, _prompt_ids(default_llm)), default_refs, "preempted")
    assert small.engine.scheduler.num_preemptions > 0
    assert small.engine.scheduler.block_manager.num_used_blocks == 0


ARCHITECTURES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "phi3-longrope", "mistral-window",
                 "qwen2-window"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_random_model_matches_transformers(tiny_model_factory, arch):
    folder = tiny_model_factory(arch)
    # LongRoPE served within its original context takes the short factors, as transformers does for these prompts
    served = AutoConfig.from_pretrained(folder).original_max_position_embeddings if arch == "phi3-longrope" else None
    llm = LLM(str(folder), dtype="float32", max_model_len=served)
    prompt_ids = _prompt_ids(llm)
    _check(_ours(llm, prompt_ids), _references(folder, prompt_ids), arch)


@pytest.mark.parametrize(("arch", "num_kv_blocks"), [("gemma3", 40), ("mistral-window", 12)])
def test_sliding_windows_match_in_chunks_with_the_prefix_cache_and_under_preemption(tiny_model_factory, arch,
                                                                                     num_kv_blocks):
    """A 16-token window over prompts of up to ~230 tokens: prefilled in 32-token chunks, in a pool too
    small for all nine sequences (preemption), then again with every prompt's blocks in the prefix cache.
    The sliding layers give back the blocks behind their window as they go, so Mistral's pool (every layer
    slides) is smaller than one whole prompt. Gemma 3's two layers are two KV cache groups of one layer
    each: its global layer keeps every block."""
    folder = tiny_model_factory(arch)
    llm = LLM(str(folder), dtype="float32", num_kv_blocks=num_kv_blocks, max_model_len=384,
              max_num_batched_tokens=32)
    prompt_ids = _prompt_ids(llm)
    refs = _references(folder, prompt_ids)
    _check(_ours(llm, prompt_ids), refs, f"{arch} chunked, preempted")
    assert llm.engine.scheduler.num_preemptions > 0
    cached = LLM(str(folder), dtype="float32", max_model_len=384)
    _ours(cached, prompt_ids)
    _check(_ours(cached, prompt_ids), refs, f"{arch} from the prefix cache")
    assert cached.engine.scheduler.prefix_cache_hits > 0


def test_bf16_default_is_as_close_to_fp32_as_transformers_bf16(default_model):
    """bf16 (the CPU default where the cores have it) moves log-probs; no more than transformers' bf16 does."""
    from engine.config import cpu_has_native_bf16

    llm = LLM(str(default_model), max_model_len=512, enforce_eager=True)  # prompt log-probs: a prefill step
    assert llm.engine.runtime.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    ids = llm.get_tokenizer().encode(PROMPTS[-2] + " " + PROMPTS[4])
    out = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    ours = torch.tensor([entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], ids[1:])])
    reference = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(default_model, dtype=dtype).eval()
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        reference[dtype] = logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    ours_error = (ours - reference[torch.float32]).abs().mean()
    transformers_error = (reference[torch.bfloat16] - reference[torch.float32]).abs().mean()
    assert ours_error <= 1.25 * transformers_error + 1e-3, (float(ours_error), float(transformers_error))
