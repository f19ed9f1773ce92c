"""The OpenAI API with the official ``openai`` client against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import anthropic
import httpx
import openai
import pytest
from conftest import metric, start_server, stop_server

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_name_and_context(client, server):
    (model,) = client.models.list().data
    assert model.id == server.model and model.model_extra["max_model_len"] == 512


def test_completion_streamed_equals_non_streamed(client, server):
    whole = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=24, temperature=0)
    chunks = list(client.completions.create(model=server.model, prompt=PROMPT, max_tokens=24, temperature=0, stream=True))
    streamed = "".join(c.choices[0].text for c in chunks)
    assert streamed == whole.choices[0].text and "Paris" in streamed
    finishes = [c.choices[0].finish_reason for c in chunks]
    assert finishes[-1] == whole.choices[0].finish_reason and all(f is None for f in finishes[:-1])
    assert whole.usage.prompt_tokens == 5 and whole.usage.total_tokens == 5 + whole.usage.completion_tokens


def test_chat_streamed_equals_non_streamed_with_usage(client, server):
    whole = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=32, temperature=0)
    stream = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=32, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        whole.choices[0].finish_reason]


def test_n2_seeded_sampling_is_reproducible(client, server):
    args = dict(model=server.model, messages=MESSAGES, max_tokens=16, temperature=1.0, n=2, seed=42)
    first = client.chat.completions.create(**args)
    second = client.chat.completions.create(**args)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert first.choices[0].message.content != first.choices[1].message.content  # each choice draws its own
    assert first.usage.completion_tokens >= 2


def test_completion_choices_index_prompts_times_n(client, server):
    out = client.completions.create(model=server.model, prompt=["One,", "Two,"], max_tokens=4, temperature=0, n=2)
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    by_index = {c.index: c.text for c in out.choices}
    assert by_index[0] == by_index[1] and by_index[2] == by_index[3]


def test_stop_string_ends_the_text(client, server):
    free = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=24, temperature=0).choices[0].text
    stop = free[4:9]
    out = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop])
    assert out.choices[0].text == free[: free.index(stop)] and out.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == free[: free.index(stop)]


def test_chat_logprobs_have_openai_shape(client, server):
    out = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=6, temperature=0,
                                         logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the best
        assert bytes(entry.bytes).decode("utf-8") == entry.token  # plain English: every token is whole UTF-8
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)


def test_completion_logprobs_have_openai_shape(client, server):
    out = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)
    logprobs = out.choices[0].logprobs
    assert "".join(logprobs.tokens) == out.choices[0].text
    assert len(logprobs.token_logprobs) == 5 and all(len(top) <= 3 for top in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0


def _post(server, path, body, headers=None):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{server.url}{path}", content=content, timeout=60,
                      headers={"content-type": "application/json", **(headers or {})})


@pytest.mark.parametrize("path, body, status, param, code", [
    ("/v1/completions", "{not json", 400, None, None),
    ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model", "model_not_found"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens", None),
    ("/v1/completions", {"prompt": "x", "max_tokens": 100000}, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"prompt": "word " * 600}, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"prompt": "x", "n": 100000}, 400, "n", None),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature", None),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p", None),
    ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, 400, "max_tokens", None),
    ("/v1/completions", {"max_tokens": 3}, 400, "prompt", None),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options", None),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", None),
    ("/v1/chat/completions", {"messages": MESSAGES, "top_logprobs": 50, "logprobs": True}, 400, "top_logprobs", None),
    ("/v1/chat/completions", {"messages": MESSAGES, "tools": [{"type": "function"}]}, 400, "tools.0", None),
    ("/v1/chat/completions", {"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}],
                              "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400, "tool_choice", None),
    ("/v1/chat/completions", {"messages": MESSAGES, "tool_choice": "required"}, 400, "tool_choice", None),
    ("/v1/chat/completions", {"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}],
                              "tool_choice": {"type": "function", "function": "f"}}, 400, "tool_choice", None),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, 400,
     "messages.0.tool_calls.0.function.arguments", None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 600}]}, 400, "messages",
     "context_length_exceeded"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role", None),
    # lone UTF-16 surrogates, legal as JSON escapes, in every kind of text field
    ("/v1/completions", {"prompt": "a\ud800b"}, 400, "prompt", None),
    ("/v1/completions", {"prompt": ["ok", "\udfff"]}, 400, "prompt.1", None),
    ("/v1/completions", {"prompt": "x", "stop": ["\ud800"]}, 400, "stop.0", None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}, 400, "messages.0.content", None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}]}, 400,
     "messages.0.content.0.text", None),
    ("/v1/chat/completions", {"messages": MESSAGES, "stop": "\udc00"}, 400, "stop", None),
    ("/v1/chat/completions", {"messages": MESSAGES, "chat_template_kwargs": {"\ud800": 1}}, 400,
     "chat_template_kwargs.\\ud800", None),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, path, body, status, param, code):
    answer = _post(server, path, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    ok = client.completions.create(model=server.model, prompt="Hello", max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_unknown_path_and_method(server):
    assert httpx.get(f"{server.url}/v1/nothing").status_code == 404
    answer = httpx.get(f"{server.url}/v1/completions")
    assert answer.status_code == 405 and "error" in answer.json()


def test_64_concurrent_streams_complete(server):
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, str]:
        stream = await client.completions.create(model=server.model, prompt=f"Item {i}:", max_tokens=12,
                                                 temperature=0, stream=True, extra_body={"ignore_eos": True})
        text, finish = "", None
        async for chunk in stream:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def run():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0,
                                      timeout=300) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    results = asyncio.run(run())
    assert len(results) == 64 and all(finish == "length" and text for text, finish in results)
    assert metric(server, "engine:kv_cache_used_blocks") == 0


def _wait_for_metric(server, name, value, timeout_s=5.0) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        current = metric(server, name)
        if current == value or time.monotonic() > deadline:
            return current
        time.sleep(0.05)  # polling /metrics, bounded by the deadline


def test_client_disconnect_mid_stream_aborts_and_frees_blocks(server):
    body = {"prompt": "Tell me a very long story.", "max_tokens": 400, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as answer:
        events = 0
        for line in answer.iter_lines():
            if line.startswith("data:"):
                events += 1
            if events == 3:
                break
    # Two running requests would mean the abort never reached the engine.
    assert _wait_for_metric(server, "engine:num_requests_running", 0) == 0
    assert _wait_for_metric(server, "engine:kv_cache_used_blocks", 0) == 0
    assert "aborted request" in server.log()


def test_non_streaming_client_disconnect_aborts(server):
    body = {"prompt": "Tell me a very long story.", "max_tokens": 400, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=1.0)
    assert _wait_for_metric(server, "engine:num_requests_running", 0) == 0
    assert _wait_for_metric(server, "engine:kv_cache_used_blocks", 0) == 0


def test_metrics_count_tokens_and_latency(server, client):
    before = metric(server, "engine:generation_tokens_total")
    client.completions.create(model=server.model, prompt="Hello", max_tokens=5, extra_body={"ignore_eos": True})
    assert metric(server, "engine:generation_tokens_total") - before == 5
    assert metric(server, "engine:time_to_first_token_seconds_count") > 0
    assert metric(server, "engine:request_success_total") > 0


def test_api_key_is_required_when_set(default_model, tmp_path):
    server = start_server(default_model, tmp_path / "auth.log", "--api-key", "sesame", "--max-model-len", "128",
                          "--enforce-eager")
    try:
        answer = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert answer.status_code == 401 and answer.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{server.url}/v2/models/{server.model}").status_code == 401
        assert httpx.get(f"{server.url}/health").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sesame", max_retries=0)
        assert good.completions.create(model=server.model, prompt="Hi", max_tokens=2).usage.completion_tokens >= 1
        # Anthropic's client sends the key as x-api-key, and is refused in Anthropic's error shape
        ask = dict(model=server.model, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
        with pytest.raises(anthropic.AuthenticationError) as refused:
            anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(**ask)
        assert refused.value.body["error"]["type"] == "authentication_error"
        assert anthropic.Anthropic(base_url=server.url, api_key="sesame", max_retries=0).messages.create(
            **ask).usage.output_tokens >= 1
    finally:
        stop_server(server)


def test_cors_preflight_is_answered_for_allowed_origins(default_model, tmp_path):
    server = start_server(default_model, tmp_path / "cors.log", "--allowed-origins", "http://app.example",
                          "--max-model-len", "128", "--enforce-eager")
    try:
        answer = httpx.options(f"{server.url}/v1/completions", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST"})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.options(f"{server.url}/v1/completions", headers={
            "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        stop_server(server)


def test_sigterm_lets_in_flight_streams_finish(default_model, tmp_path):
    server = start_server(default_model, tmp_path / "shutdown.log", "--max-model-len", "128", "--enforce-eager")
    body = {"prompt": "Story:", "max_tokens": 40, "stream": True, "ignore_eos": True}
    events = []
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as answer:
        for line in answer.iter_lines():
            if not line.startswith("data:"):
                continue
            events.append(line[5:].strip())
            if len(events) == 1:
                server.process.terminate()
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and len(chunks) == 40
    assert "Traceback" not in server.log()


def test_repeated_prompt_reports_cached_tokens(client, server):
    prompt = "A long shared instruction that many requests repeat word for word. " * 8
    first = client.completions.create(model=server.model, prompt=prompt, max_tokens=2)
    second = client.completions.create(model=server.model, prompt=prompt, max_tokens=2)
    assert second.usage.prompt_tokens_details.cached_tokens >= 16 * (second.usage.prompt_tokens // 16 - 1)
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert metric(server, "engine:prefix_cache_hits_total") > 0
    assert 0 < metric(server, "engine:prefix_cache_hit_rate") <= 1
