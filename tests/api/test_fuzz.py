"""Fuzzed request bodies on every POST route: never a 5xx, and the server keeps serving.

Each example starts from a valid body (two tokens, so the valid ones finish fast) and replaces
some fields with arbitrary JSON: lone UTF-16 surrogates, NUL bytes, huge and non-finite numbers,
wrong types, nested containers. Bodies nested far deeper than any parser's recursion limit are
sent on their own.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_oip import generate_text

MESSAGES = [{"role": "user", "content": "Hi"}]
MODEL = "{model}"  # the served model's name, filled in per server (Anthropic's API requires it)
BASES = {
    "/v1/completions": {"prompt": "Hello", "max_tokens": 2},
    "/v1/chat/completions": {"messages": MESSAGES, "max_tokens": 2},
    "/v2/models/{model}/generate": {"text_input": "Hello", "parameters": {"max_tokens": 2}},
    "/v2/models/{model}/generate_stream": {"text_input": "Hello", "parameters": {"max_tokens": 2}},
    "/tokenize": {"prompt": "Hello"},
    "/detokenize": {"tokens": [1, 2]},
    "/v1/responses": {"input": "Hello", "max_output_tokens": 2},
    "/v1/messages": {"model": MODEL, "messages": MESSAGES, "max_tokens": 2},
    "/v1/messages/count_tokens": {"model": MODEL, "messages": MESSAGES},
    "/v2/models/{model}/infer": {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["Hi"]},
                                            {"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": [2]}]},
}
# Fields a fuzzer may set, per route (besides arbitrary unknown names).
FIELDS = {
    "/v1/completions": ["prompt", "max_tokens", "n", "stop", "temperature", "top_p", "top_k", "seed", "logprobs",
                        "echo", "stream", "stream_options", "logit_bias", "stop_token_ids", "model", "min_tokens"],
    "/v1/chat/completions": ["messages", "max_tokens", "n", "stop", "temperature", "logprobs", "top_logprobs",
                             "stream", "tools", "tool_choice", "response_format", "chat_template_kwargs", "model",
                             "seed"],
    "/v2/models/{model}/generate": ["text_input", "parameters", "max_tokens", "stop", "temperature", "id"],
    "/v2/models/{model}/generate_stream": ["text_input", "parameters", "max_tokens", "stop", "temperature"],
    "/v2/models/{model}/infer": ["inputs", "outputs", "parameters", "id"],
    "/tokenize": ["prompt", "messages", "add_special_tokens", "return_token_strs", "chat_template_kwargs", "model"],
    "/detokenize": ["tokens", "model"],
    "/v1/responses": ["input", "instructions", "tools", "tool_choice", "text", "max_output_tokens", "temperature",
                      "top_p", "stream", "store", "previous_response_id", "reasoning", "model", "parallel_tool_calls"],
    "/v1/messages": ["messages", "system", "max_tokens", "tools", "tool_choice", "stop_sequences", "temperature",
                     "top_p", "top_k", "stream", "thinking", "output_config", "model"],
    "/v1/messages/count_tokens": ["messages", "system", "tools", "tool_choice", "thinking", "model"],
}
# Where each route takes text: a hostile string goes into one of these (a path of keys and indexes).
TEXT_FIELDS = {
    "/v1/completions": [("prompt",), ("prompt", 0), ("stop",), ("model",), ("user",)],
    "/v1/chat/completions": [("messages", 0, "content"), ("messages", 0, "name"), ("stop",),
                             ("chat_template_kwargs", "x")],
    "/v2/models/{model}/generate": [("text_input",), ("parameters", "stop"), ("id",)],
    "/v2/models/{model}/generate_stream": [("text_input",), ("parameters", "stop")],
    "/v2/models/{model}/infer": [("inputs", 0, "data", 0), ("id",), ("inputs", 0, "name")],
    "/tokenize": [("prompt",), ("model",)],
    "/detokenize": [("model",)],
    "/v1/responses": [("input",), ("input", 0, "content"), ("input", 0, "arguments"), ("instructions",),
                      ("tools", 0, "name"), ("model",)],
    "/v1/messages": [("messages", 0, "content"), ("messages", 0, "content", 0, "text"), ("system",),
                     ("stop_sequences", 0), ("tools", 0, "name"), ("model",)],
    "/v1/messages/count_tokens": [("messages", 0, "content"), ("system",), ("model",)],
}
# Token counts that would make a valid request generate for long; the fuzzer skips them.
LONG_RUNS = range(3, 100_000)

surrogates = st.sampled_from(["\ud800", "\udfff", "a\udc00b", "\ud83d"])
hostile = st.one_of(surrogates, st.text(st.characters(codec=None), min_size=1, max_size=8).map(lambda t: t + "\ud800"),
                    st.sampled_from(["\x00", "a\x00b", "\ufffd", "\u202e", "\U0001f600" * 50, '["\\ud800"]']))
texts = st.one_of(st.text(max_size=12), hostile)
numbers = st.one_of(st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70), st.floats(allow_nan=True),
                    st.sampled_from([10**400, -(10**400), 1e308]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(texts, inner, max_size=4)), max_leaves=12)


def _no_long_run(value: object) -> bool:
    return not (isinstance(value, int) and not isinstance(value, bool) and value in LONG_RUNS)


def _encode(body: dict) -> bytes:
    """JSON as a client sends it: non-finite floats and lone surrogates become JSON's own spellings."""
    return json.dumps(body).encode()


def _base(route: str, server) -> dict:
    """A fresh copy of the route's valid body, for this server."""
    body = json.loads(json.dumps(BASES[route]))
    if body.get("model") == MODEL:
        body["model"] = server.model
    return body


def _assert_served(server, route: str, content: bytes) -> None:
    url = server.url + route.format(model=server.model)
    answer = httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=120)
    assert answer.status_code < 500, (route, content[:300], answer.status_code, answer.text[:300])
    assert "internal error" not in answer.text and "the engine failed" not in answer.text, answer.text[:300]


@pytest.mark.parametrize("route", list(BASES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_bodies_never_get_a_5xx(server, route, data):
    body = _base(route, server)
    names = data.draw(st.lists(st.one_of(st.sampled_from(FIELDS[route]), texts), min_size=1, max_size=3))
    for name in names:
        body[name] = data.draw(values.filter(_no_long_run), label=name)
    _assert_served(server, route, _encode(body))


@pytest.mark.parametrize("route", list(BASES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_text_in_any_text_field_never_gets_a_5xx(server, route, data):
    body = _base(route, server)
    *parents, last = data.draw(st.sampled_from(TEXT_FIELDS[route]))
    target = body
    for key, inner in zip(parents, [*parents[1:], last]):  # make each step the container the next key needs
        child = target.get(key) if isinstance(target, dict) else target[key]
        if isinstance(inner, int) and not isinstance(child, list):
            child = ["Hello"]
        elif isinstance(inner, str) and not isinstance(child, dict):
            child = {}
        target[key] = child
        target = child
    target[last] = data.draw(hostile)
    _assert_served(server, route, _encode(body))


@pytest.mark.parametrize("route", list(BASES))
def test_deeply_nested_bodies_are_refused_cleanly(server, route):
    depth = 100_000
    for content in ("[" * depth + "]" * depth, '{"x": ' + "[" * depth + "]" * depth + "}",
                    '{"prompt": ' + '{"a": ' * depth + "1" + "}" * depth + "}"):
        _assert_served(server, route, content.encode())
    assert generate_text(server, "Hi", max_tokens=2)["text_output"]  # the server still serves


def test_the_server_serves_normally_after_the_fuzzing(server):
    answer = httpx.post(f"{server.url}/v1/completions", timeout=60,
                        json={"model": server.model, "prompt": "Hello", "max_tokens": 2, "temperature": 0})
    assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"] == "length"
    assert generate_text(server, "Hi", max_tokens=2)["text_output"]


@pytest.mark.parametrize("route, body", [
    ("/v2/models/{model}/generate_stream", {"text_input": "Hi", "temperature": 10**400, "parameters": {"max_tokens": 2}}),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "seed": 2**70}),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 2, "stop_token_ids": [2**70], "min_tokens": 1}),
])
def test_numbers_the_sampler_cannot_hold_are_400s(server, route, body):
    """Found by the fuzzer: an integer too large for a float or an int64 failed in the step's tensors."""
    answer = httpx.post(server.url + route.format(model=server.model), content=_encode(body),
                        headers={"content-type": "application/json"}, timeout=60)
    assert answer.status_code == 400, answer.text
