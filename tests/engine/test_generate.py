"""LLM.generate / chat behaviour: inputs, errors, block accounting, streaming of text."""

from __future__ import annotations

import pytest

from engine import LLM, InvalidPromptError, RequestRejected, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_model_factory):
    return LLM(str(tiny_model_factory("llama")), max_model_len=64, enforce_eager=True)


def test_too_long_prompt_is_rejected_and_the_others_complete(llm):
    tokenizer = llm.get_tokenizer()
    long_prompt = {"prompt_token_ids": [5] * 80}
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    alone = llm.generate(["Hello there", "Good morning"], params, use_tqdm=False)

    with pytest.raises(ValueError, match=r"context length is 64 tokens.*80 tokens") as caught:
        llm.generate(["Hello there", long_prompt, "Good morning"], params, use_tqdm=False)

    err = caught.value
    assert isinstance(err, InvalidPromptError) and list(err.errors) == [1]
    assert err.outputs[1] is None
    assert [err.outputs[0].outputs[0].token_ids, err.outputs[2].outputs[0].token_ids] == [
        alone[0].outputs[0].token_ids,
        alone[1].outputs[0].token_ids,
    ]
    assert err.outputs[0].outputs[0].text == tokenizer.decode(alone[0].outputs[0].token_ids)
    assert llm.engine.scheduler.block_manager.num_used_blocks == 0


def test_no_block_in_use_after_generate(llm):
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (1, 7, 20, 33)]
    outs = llm.generate(["a", "bb bb", "ccc ccc ccc", "dddd " * 10], params, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [1, 7, 20, 33]
    assert all(o.finished and o.outputs[0].finish_reason == "length" for o in outs)
    manager = llm.engine.scheduler.block_manager
    assert manager.num_used_blocks == 0 and manager.num_free_blocks == manager.num_total_blocks


def test_generation_stops_at_max_model_len(llm):
    out = llm.generate({"prompt_token_ids": [7] * 60}, SamplingParams(max_tokens=50, ignore_eos=True), use_tqdm=False)
    completion = out[0].outputs[0]
    # Prompt plus output never exceed the context: 60 + 4 = 64.
    assert len(completion.token_ids) == 4 and completion.finish_reason == "length"


def test_stop_token_ids_and_eos(llm):
    free = llm.generate("Hello", SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True), use_tqdm=False)
    third = free[0].outputs[0].token_ids[2]
    stopped = llm.generate("Hello", SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=[third]), use_tqdm=False)
    completion = stopped[0].outputs[0]
    first_hit = free[0].outputs[0].token_ids.index(third)
    assert completion.token_ids == free[0].outputs[0].token_ids[: first_hit + 1]
    assert completion.finish_reason == "stop" and completion.stop_reason == third


def test_seeded_sampling_is_reproducible_and_batch_independent(llm):
    seeded = SamplingParams(max_tokens=12, temperature=1.0, seed=1234, ignore_eos=True)
    alone = llm.generate("The sea", seeded, use_tqdm=False)[0].outputs[0].token_ids
    other = SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True)
    batched = llm.generate(["x y z", "The sea", "q"], [other, seeded, other], use_tqdm=False)
    assert batched[1].outputs[0].token_ids == alone


def test_text_is_the_decoded_tokens(llm):
    out = llm.generate("The", SamplingParams(max_tokens=16, temperature=1.0, seed=3, ignore_eos=True), use_tqdm=False)
    completion = out[0].outputs[0]
    assert completion.text == llm.get_tokenizer().decode(completion.token_ids, skip_special_tokens=True)


def test_chat_uses_the_template(default_model):
    llm = LLM(str(default_model), max_model_len=256, dtype="float32", enforce_eager=True)  # the answer below is fp32's greedy one
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(max_tokens=24, temperature=0.0), use_tqdm=False)
    prompt_text = llm.get_tokenizer().decode(out[0].prompt_token_ids)
    assert prompt_text.startswith("<|im_start|>system") and prompt_text.endswith("<|im_start|>assistant\n")
    assert "Paris" in out[0].outputs[0].text


def test_a_chat_template_given_replaces_the_models(tiny_model_factory, tmp_path):
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    (tmp_path / "t.jinja").write_text(template)
    params = SamplingParams(max_tokens=1, temperature=0.0)
    for given in (template, str(tmp_path / "t.jinja")):
        llm = LLM(str(tiny_model_factory("llama")), max_model_len=64, enforce_eager=True, chat_template=given)
        out = llm.chat([{"role": "user", "content": "Hi"}], params, use_tqdm=False)
        assert llm.get_tokenizer().decode(out[0].prompt_token_ids) == "[user] Hi\n[assistant]"
    with pytest.raises(ValueError, match="chat_template must be a Jinja template or a file"):
        LLM(str(tiny_model_factory("llama")), max_model_len=64, enforce_eager=True, chat_template="no/such.jinja")


@pytest.mark.parametrize(
    "kwargs, field",
    [({"temperature": -1.0}, "temperature"), ({"max_tokens": 0}, "max_tokens"), ({"min_tokens": -1}, "min_tokens"),
     ({"stop_token_ids": [-3]}, "stop_token_ids"), ({"n": 0}, "n"), ({"top_p": 0.0}, "top_p"),
     ({"top_k": -2}, "top_k"), ({"min_p": 1.5}, "min_p"), ({"presence_penalty": 3.0}, "presence_penalty"),
     ({"frequency_penalty": -2.5}, "frequency_penalty"), ({"repetition_penalty": 0.0}, "repetition_penalty"),
     ({"logit_bias": {5: 200.0}}, "logit_bias"), ({"logprobs": 21}, "logprobs"), ({"prompt_logprobs": -1}, "prompt_logprobs"),
     ({"stop": [""]}, "stop"), ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
     ({"temperature": 10**400}, "temperature"), ({"temperature": float("inf")}, "temperature"),
     ({"presence_penalty": float("nan")}, "presence_penalty"), ({"seed": 2**64}, "seed")],
)
def test_invalid_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"block_size": 12}, "block_size"), ({"dtype": "int3"}, "dtype"), ({"max_num_seqs": 0}, "max_num_seqs"),
     ({"not_an_option": 1}, "not_an_option")],
)
def test_invalid_engine_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LLM("unused", **kwargs)


def test_token_ids_past_the_vocabulary_are_refused_per_request_and_a_huge_top_k_is_no_filter(tiny_model_factory):
    """Numbers that fit a SamplingParams but not the sampler's tensors never reach a step."""
    llm = LLM(str(tiny_model_factory("llama")), max_model_len=64, enforce_eager=True)
    wide = llm.generate(["Hi"], SamplingParams(max_tokens=3, top_k=2**70, seed=1, ignore_eos=True), use_tqdm=False)
    plain = llm.generate(["Hi"], SamplingParams(max_tokens=3, seed=1, ignore_eos=True), use_tqdm=False)
    assert wide[0].outputs[0].token_ids == plain[0].outputs[0].token_ids
    for field, params in (("stop_token_ids", SamplingParams(max_tokens=2, min_tokens=1, stop_token_ids=[2**70])),
                          ("logit_bias", SamplingParams(max_tokens=2, logit_bias={2**70: 1.0}))):
        with pytest.raises(InvalidPromptError) as caught:
            llm.generate(["Hi", "Hello"], [params, SamplingParams(max_tokens=2)], use_tqdm=False)
        assert [err.field for err in caught.value.errors.values()] == [field]
        assert caught.value.outputs[1].outputs[0].token_ids  # the other prompt was answered


def test_limits_are_checked_once_and_name_the_field(tiny_model_factory):
    llm = LLM(str(tiny_model_factory("llama")), max_model_len=64, max_num_seqs=4, enforce_eager=True)
    cases = [({"prompt_token_ids": [5] * 65}, SamplingParams(max_tokens=1), "prompt", "context_length_exceeded"),
             ({"prompt_token_ids": [5] * 8}, SamplingParams(max_tokens=1, n=5), "n", None)]
    for prompt, params, field, code in cases:
        with pytest.raises(InvalidPromptError) as caught:
            llm.generate(prompt, params, use_tqdm=False)
        (err,) = caught.value.errors.values()
        assert isinstance(err, RequestRejected) and (err.field, err.code) == (field, code)
    # the engine's own check, and the same one the API asks with max_tokens (OpenAI's rule)
    llm.engine.check_request(60, 4)
    with pytest.raises(RequestRejected, match=r"65 tokens \(60 in the prompt, 5 in the completion\)") as caught:
        llm.engine.check_request(60, 1, max_new_tokens=5)
    assert caught.value.field == "max_tokens"


def test_empty_and_out_of_vocab_prompts_are_rejected(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate({"prompt_token_ids": []}, use_tqdm=False)
    with pytest.raises(ValueError, match="vocabulary"):
        llm.generate({"prompt_token_ids": [10**9]}, use_tqdm=False)


def test_chat_rejects_a_too_long_conversation_and_answers_the_others(default_model):
    llm = LLM(str(default_model), max_model_len=64, enforce_eager=True)
    params = SamplingParams(max_tokens=4, temperature=0.0)
    short = [{"role": "user", "content": "Hi"}]
    long = [{"role": "user", "content": "word " * 100}]
    with pytest.raises(ValueError, match=r"context length is 64 tokens") as caught:
        llm.chat([short, long, short], params, use_tqdm=False)
    outputs = caught.value.outputs
    assert outputs[1] is None and outputs[0].outputs[0].token_ids == outputs[2].outputs[0].token_ids
