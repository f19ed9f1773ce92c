"""Sampling through the whole engine: logprobs against transformers, n > 1 block sharing, stop strings."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine import LLM, EngineConfig, LLMEngine, SamplingParams


@pytest.fixture(scope="module")
def llm(default_model):
    return LLM(str(default_model), dtype="float32", max_model_len=512, enforce_eager=True)


def test_logprobs_match_transformers_log_softmax(llm, default_model):
    prompt = "The three primary colours are"
    params = SamplingParams(max_tokens=12, temperature=0.9, seed=5, logprobs=5, prompt_logprobs=3, ignore_eos=True)
    out = llm.generate(prompt, params, use_tqdm=False)[0]
    completion = out.outputs[0]

    model = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32).eval()
    ids = out.prompt_token_ids + completion.token_ids
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    num_prompt = len(out.prompt_token_ids)

    for step, (token, position) in enumerate(zip(completion.token_ids, completion.logprobs)):
        reference = ref[num_prompt - 1 + step]
        assert position[token].logprob == pytest.approx(float(reference[token]), abs=1e-4)
        top = reference.topk(5)
        for tid, value in zip(top.indices.tolist(), top.values.tolist()):
            assert position[tid].logprob == pytest.approx(value, abs=1e-4)
        assert position[token].rank == int((reference > reference[token]).sum()) + 1
    assert completion.cumulative_logprob == pytest.approx(sum(p[t].logprob for t, p in zip(completion.token_ids, completion.logprobs)))

    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == num_prompt
    for position in range(1, num_prompt):
        token = out.prompt_token_ids[position]
        assert out.prompt_logprobs[position][token].logprob == pytest.approx(float(ref[position - 1][token]), abs=1e-4)


def test_prompt_logprobs_survive_chunked_prefill(default_model, llm):
    prompt = "A long prompt, read in chunks of eight tokens, still gets one log-probability per token. " * 2
    params = SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=0)
    chunked = LLM(str(default_model), max_model_len=256, dtype="float32", max_num_batched_tokens=8, enforce_eager=True)
    whole = llm.generate(prompt, params, use_tqdm=False)[0].prompt_logprobs
    parts = chunked.generate(prompt, params, use_tqdm=False)[0].prompt_logprobs
    assert len(parts) == len(whole)
    for a, b in zip(whole[1:], parts[1:]):
        ((token, want),) = a.items()
        assert parts and b[token].logprob == pytest.approx(want.logprob, abs=1e-4)


def test_token_bytes_rebuild_split_characters(llm):
    ids = llm.get_tokenizer().encode("naïve 🦙")
    out = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    joined = b"".join(next(iter(p.values())).token_bytes for p in out.prompt_logprobs[1:])
    first = llm.engine.output_processor.token_bytes.bytes(ids[0])
    assert (first + joined).decode() == "naïve 🦙"


def _peak_blocks(engine: LLMEngine, requests: list[tuple[str, SamplingParams]], prompt_ids: list[int]) -> int:
    for request_id, params in requests:
        engine.add_request(request_id, {"prompt_token_ids": prompt_ids}, params)
    peak = 0
    while engine.has_unfinished_requests():
        engine.step()
        peak = max(peak, engine.scheduler.block_manager.num_used_blocks)
    engine.check_invariants()
    assert engine.scheduler.block_manager.num_used_blocks == 0
    return peak


def test_n3_shares_prompt_blocks_and_frees_them(default_model):
    # Without prefix caching, so the second run cannot reuse the first one's blocks.
    engine = LLMEngine(EngineConfig(str(default_model), max_model_len=512, enable_prefix_caching=False,
                                    enforce_eager=True))
    prompt_ids = list(range(1000, 1100))  # 100 tokens: 6 full blocks and a partial one
    params = SamplingParams(max_tokens=3, temperature=1.0, seed=3, ignore_eos=True)
    shared = _peak_blocks(engine, [("grouped", SamplingParams(**{**vars(params), "n": 3}))], prompt_ids)
    separate = _peak_blocks(engine, [(f"alone{i}", params) for i in range(3)], prompt_ids)
    assert shared == 7 + 2  # the prompt's 7 blocks once, plus a private copy of the partial block per fork
    assert separate == 3 * 7


def test_n3_greedy_sequences_equal_the_single_sequence(llm):
    prompt = "Write one sentence about the sea, then one about mountains."
    single = llm.generate(prompt, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True), use_tqdm=False)[0]
    grouped = llm.generate(prompt, SamplingParams(n=3, max_tokens=24, temperature=0.0, ignore_eos=True), use_tqdm=False)[0]
    assert [c.index for c in grouped.outputs] == [0, 1, 2]
    assert all(c.token_ids == single.outputs[0].token_ids for c in grouped.outputs)
    assert all(c.text == single.outputs[0].text for c in grouped.outputs)


def test_n3_seeded_is_reproducible_and_varied(llm):
    params = SamplingParams(n=3, max_tokens=16, temperature=1.0, seed=11, ignore_eos=True)
    first = llm.generate("Tell me a story:", params, use_tqdm=False)[0]
    again = llm.generate(["Other prompt", "Tell me a story:"], params, use_tqdm=False)[1]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]
    assert len({tuple(c.token_ids) for c in first.outputs}) == 3


def _free_run(llm, prompt, max_tokens=40):
    return llm.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True), use_tqdm=False)[0].outputs[0]


def test_stop_string_spanning_tokens_is_cut_and_reported(llm):
    prompt = "Here is a list of fruits: apple, banana,"
    free = _free_run(llm, prompt)
    tokenizer = llm.get_tokenizer()
    # A stop string made of the tail of token 3 and the head of token 5: it spans three tokens.
    pieces = [tokenizer.decode(free.token_ids[: i + 1]) for i in range(8)]
    stop = free.text[len(pieces[2]) - 2 : len(pieces[4]) + 2]
    assert len(stop) >= 4
    out = llm.generate(prompt, SamplingParams(max_tokens=40, temperature=0.0, stop=[stop]), use_tqdm=False)[0].outputs[0]
    assert out.text == free.text[: free.text.index(stop)]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    assert llm.engine.scheduler.block_manager.num_used_blocks == 0


def test_the_earliest_of_several_stop_strings_wins(llm):
    prompt = "Count: one, two, three,"
    free = _free_run(llm, prompt)
    late, early = free.text[20:26], free.text[8:12]
    out = llm.generate(prompt, SamplingParams(max_tokens=40, temperature=0.0, stop=[late, early, "never-seen-xyz"]),
                       use_tqdm=False)[0].outputs[0]
    assert out.text == free.text[: free.text.index(early)] and out.stop_reason == early


def test_streamed_text_never_shows_an_undecided_stop_prefix(default_model):
    engine = LLMEngine(EngineConfig(str(default_model), max_model_len=256, enforce_eager=True))
    prompt = "Here is a list of fruits: apple, banana,"
    engine.add_request("free", prompt, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
    free_text = ""
    while engine.has_unfinished_requests():
        for out in engine.step():
            free_text = out.outputs[0].text
    stop = free_text[10:16]
    engine.add_request("stopped", prompt, SamplingParams(max_tokens=30, temperature=0.0, stop=stop))
    texts = []
    while engine.has_unfinished_requests():
        texts.extend(out.outputs[0].text for out in engine.step())
    final = free_text[: free_text.index(stop)]
    assert texts[-1] == final
    for text in texts:  # every streamed state is a prefix of the final text: nothing shown is taken back
        assert final.startswith(text)


def test_min_tokens_and_logit_bias_steer_eos(llm):
    eos = llm.get_tokenizer().eos_token_id
    forced = SamplingParams(max_tokens=20, temperature=0.0, min_tokens=5, logit_bias={eos: 100.0})
    out = llm.generate("Hello", forced, use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 6 and out.token_ids[-1] == eos and out.finish_reason == "stop"
    assert eos not in out.token_ids[:5]


def test_skip_special_tokens_false_keeps_eos_text(llm):
    eos = llm.get_tokenizer().eos_token_id
    params = dict(max_tokens=5, temperature=0.0, logit_bias={eos: 100.0})
    kept = llm.generate("Hi", SamplingParams(**params, skip_special_tokens=False), use_tqdm=False)[0].outputs[0]
    skipped = llm.generate("Hi", SamplingParams(**params), use_tqdm=False)[0].outputs[0]
    assert kept.text == llm.get_tokenizer().eos_token and skipped.text == ""


def test_out_of_vocab_logit_bias_is_rejected(llm):
    with pytest.raises(ValueError, match="logit_bias"):
        llm.generate("Hi", SamplingParams(logit_bias={10**7: 1.0}), use_tqdm=False)
