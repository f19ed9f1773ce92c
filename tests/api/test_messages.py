"""POST /v1/messages and /v1/messages/count_tokens through a real ``engine serve`` with the official
anthropic client: text, stop_sequences and count_tokens on the default model (conftest.py's
``server``); tool_use round trips and thinking on the tiny Qwen-style one (``qwen_server``)."""

from __future__ import annotations

import anthropic
import httpx
import jsonschema
import pytest

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "additionalProperties": False, "required": ["city"],
                            "properties": {"city": {"type": "string", "maxLength": 12},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def client_of(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def streamed(client, **kwargs):
    """The events of a streamed message (checked for order) and the message the client assembles."""
    with client.messages.stream(**kwargs) as stream:
        events = [event for event in stream if event.type in (
            "message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
            "message_stop")]
        final = stream.get_final_message()
    assert events[0].type == "message_start" and events[-2].type == "message_delta"
    assert events[-1].type == "message_stop"
    open_block = None
    for event in events[1:-2]:
        if event.type == "content_block_start":
            assert open_block is None
            open_block = event.index
        else:
            assert event.index == open_block
            open_block = None if event.type == "content_block_stop" else open_block
    assert open_block is None
    return events, final


def without_ids(content) -> list[dict]:
    return [{k: v for k, v in block.model_dump(exclude_none=True).items() if k != "id"} for block in content]


def test_text_streams_the_message_it_returns(server):
    client = client_of(server)
    kwargs = dict(model=server.model, max_tokens=16, system="You are a helpful assistant.",
                  messages=[{"role": "user", "content": [{"type": "text", "text": "Name three colours."}]}],
                  extra_body={"temperature": 0.0})
    whole = client.messages.create(**kwargs)
    assert whole.type == "message" and whole.role == "assistant" and whole.model == server.model
    assert whole.stop_reason in ("end_turn", "max_tokens") and whole.content[0].type == "text"
    assert whole.usage.output_tokens >= 1 and whole.usage.input_tokens + whole.usage.cache_read_input_tokens > 10
    events, final = streamed(client, **kwargs)
    assert without_ids(final.content) == without_ids(whole.content)
    assert (final.stop_reason, final.usage.output_tokens) == (whole.stop_reason, whole.usage.output_tokens)
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == whole.content[0].text
    sampled = client.messages.create(**{**kwargs, "extra_body": {"temperature": 0.9, "top_p": 0.9, "top_k": 20}})
    assert sampled.usage.output_tokens >= 1


def test_stop_sequences_end_the_text_and_are_reported(server):
    client = client_of(server)
    kwargs = dict(model=server.model, max_tokens=24, messages=[{"role": "user", "content": "Count from 1 to 20."}],
                  extra_body={"temperature": 0.0})
    text = client.messages.create(**kwargs).content[0].text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), text
    for reply in (client.messages.create(**kwargs, stop_sequences=[stop]),
                  streamed(client, **kwargs, stop_sequences=[stop])[1]):
        assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == stop
        assert reply.content[0].text == text[: text.index(stop)]


def test_count_tokens_counts_what_a_message_would_send(server):
    client = client_of(server)
    kwargs = dict(model=server.model, system="Be brief.", messages=ASK + [
        {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "And tomorrow?"}])
    counted = client.messages.count_tokens(**kwargs).input_tokens
    sent = client.messages.create(**kwargs, max_tokens=1).usage
    assert counted == sent.input_tokens + sent.cache_read_input_tokens > 20


def test_a_tool_use_and_its_result_round_trip(qwen_server):
    client = client_of(qwen_server)
    kwargs = dict(model=qwen_server.model, max_tokens=100, messages=ASK, tools=[WEATHER],
                  tool_choice={"type": "any", "disable_parallel_tool_use": True}, extra_body={"temperature": 0.0})
    first = client.messages.create(**kwargs)
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert first.stop_reason == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_")
    jsonschema.validate(use.input, WEATHER["input_schema"])
    events, final = streamed(client, **kwargs)
    assert without_ids(final.content) == without_ids(first.content) and final.stop_reason == "tool_use"
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)

    named = client.messages.create(**{**kwargs, "tool_choice": {"type": "tool", "name": "get_weather"}})
    assert [block.name for block in named.content if block.type == "tool_use"] == ["get_weather"]
    conversation = ASK + [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 degrees"},
                                     {"type": "text", "text": "Thanks!"}]}]
    second = client.messages.create(model=qwen_server.model, max_tokens=4, messages=conversation, tools=[WEATHER],
                                    extra_body={"temperature": 0.0})
    first_prompt = first.usage.input_tokens + first.usage.cache_read_input_tokens
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens > first_prompt + 10
    assert second.usage.cache_read_input_tokens >= 16  # the earlier turn's prompt came from the prefix cache


def test_thinking_comes_back_as_thinking_blocks(qwen_server):
    """A prefilled ``<think>`` leaves the reply in its thinking, which the qwen3 parser hands back as a
    thinking block, streamed as thinking deltas."""
    client = client_of(qwen_server)
    kwargs = dict(model=qwen_server.model, max_tokens=12, extra_body={"temperature": 0.0},
                  messages=ASK + [{"role": "assistant", "content": "<think>\n"}])
    whole = client.messages.create(**kwargs)
    assert whole.content[0].type == "thinking" and whole.content[0].thinking
    events, final = streamed(client, **kwargs)
    assert without_ids(final.content) == without_ids(whole.content)
    deltas = "".join(e.delta.thinking for e in events if e.type == "content_block_delta" and e.index == 0)
    assert deltas == whole.content[0].thinking


@pytest.mark.parametrize("change, status, kind", [
    ({"max_tokens": None}, 400, "invalid_request_error"),
    ({"max_tokens": 0}, 400, "invalid_request_error"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, 400, "invalid_request_error"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "x"}]}]}, 400, "invalid_request_error"),
    ({"tools": [{"name": "f"}]}, 400, "invalid_request_error"),
    ({"tools": [{"name": "f", "input_schema": "nope"}]}, 400, "invalid_request_error"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400, "invalid_request_error"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, 400, "invalid_request_error"),
    ({"tool_choice": {"type": "sometimes"}}, 400, "invalid_request_error"),
    ({"output_config": {"format": {"type": "json_schema", "schema": {"type": "objekt"}}}}, 400,
     "invalid_request_error"),
    ({"temperature": -1}, 400, "invalid_request_error"),
    ({"model": "claude-sonnet"}, 404, "not_found_error"),
])
def test_bad_requests_get_anthropic_errors(qwen_server, change, status, kind):
    body = {"model": qwen_server.model, "max_tokens": 4, "messages": ASK, **change}
    body = {key: value for key, value in body.items() if value is not None}
    for stream in (False, True):
        reply = httpx.post(f"{qwen_server.url}/v1/messages", json={**body, "stream": stream}, timeout=60)
        assert reply.status_code == status, reply.text
        error = reply.json()
        assert error["type"] == "error" and error["error"]["type"] == kind and error["error"]["message"]
    if "max_tokens" in body:  # the client itself insists on max_tokens
        sampling = {key: body.pop(key) for key in ("temperature",) if key in body}  # not in the client's signature
        with pytest.raises(anthropic.APIStatusError) as raised:
            client_of(qwen_server).messages.create(**body, extra_body=sampling)
        assert raised.value.status_code == status and raised.value.body["error"]["type"] == kind
