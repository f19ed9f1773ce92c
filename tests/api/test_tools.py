"""Tool calling and reasoning through a real ``engine serve`` with the official openai client: a tiny
Qwen-style model (random weights, the Qwen2.5 chat template in tests/fixtures) whose outputs only the
grammar makes valid, so every assertion is about the server, not the model's skill."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 12},
                                  "unit": {"enum": ["celsius", "fahrenheit"]},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                                       "properties": {"zone": {"type": "string", "pattern": "^[A-Z]{3}$"}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(qwen_server):
    return openai.OpenAI(base_url=f"{qwen_server.url}/v1", api_key="unused", max_retries=0)


def rebuilt_calls(chunks) -> tuple[list[dict], str | None, str]:
    """Tool calls, finish reason and content as a client assembles them from streamed deltas."""
    calls, reason, content = [], None, ""
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                if call.index == len(calls):
                    assert call.id and call.function.name  # the id and name come first
                    calls.append({"id": call.id, "name": call.function.name, "arguments": ""})
                calls[call.index]["arguments"] += call.function.arguments or ""
            reason = choice.finish_reason or reason
    return calls, reason, content


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_calls_parse_validate_and_stream_the_same(client, qwen_server, tool_choice):
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in (WEATHER, TIME)}
    for seed in range(3):
        kwargs = dict(model=qwen_server.model, messages=ASK, tools=[WEATHER, TIME], tool_choice=tool_choice,
                      temperature=0.8, seed=seed, max_tokens=150, parallel_tool_calls=False)
        reply = client.chat.completions.create(**kwargs)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        if isinstance(tool_choice, dict):
            assert call.function.name == "get_time"
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
        calls, reason, content = rebuilt_calls(client.chat.completions.create(**kwargs, stream=True))
        assert reason == "tool_calls" and content == ""
        assert [(c["name"], c["arguments"]) for c in calls] == [(call.function.name, call.function.arguments)]


def test_a_tool_result_renders_and_the_conversation_continues(client, qwen_server):
    first = client.chat.completions.create(model=qwen_server.model, messages=ASK, tools=[WEATHER],
                                           tool_choice="required", seed=1, max_tokens=150, parallel_tool_calls=False)
    call = first.choices[0].message.tool_calls[0]
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                             "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    reply = client.chat.completions.create(model=qwen_server.model, messages=messages, tools=[WEATHER],
                                           max_tokens=8, temperature=0.0)
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # the template rendered the call and its result: the prompt holds both
    assert reply.usage.prompt_tokens > first.usage.prompt_tokens + len(call.function.arguments) // 4
    none = client.chat.completions.create(model=qwen_server.model, messages=ASK, tools=[WEATHER], tool_choice="none",
                                          max_tokens=4)
    assert none.choices[0].message.tool_calls is None and none.usage.prompt_tokens < first.usage.prompt_tokens


def test_thinking_goes_to_reasoning_and_the_json_to_content(client, qwen_server):
    """The assistant turn opens with <think> (prefilled), so the output thinks first; a bias on the
    "</think>" token makes the random model end its thinking after a few tokens, and then keeps pushing
    it into the JSON's strings: the split must still happen at the first </think>."""
    schema = {"type": "object", "additionalProperties": False, "required": ["answer", "score"],
              "properties": {"answer": {"type": "string", "maxLength": 20},
                             "score": {"type": "integer", "minimum": 0, "maximum": 9}}}
    bias = {"4": 6.0}  # "</think>", see make_qwen_style in conftest.py
    messages = ASK + [{"role": "assistant", "content": "<think>\n"}]
    for seed in range(3):
        kwargs = dict(model=qwen_server.model, messages=messages, temperature=0.8, seed=seed, max_tokens=250,
                      logit_bias=bias, response_format={"type": "json_schema",
                                                        "json_schema": {"name": "a", "schema": schema, "strict": True}},
                      extra_body={"continue_final_message": True, "add_generation_prompt": False})
        message = client.chat.completions.create(**kwargs).choices[0].message
        reasoning = message.model_extra["reasoning_content"]
        assert reasoning and "</think>" not in reasoning
        jsonschema.validate(json.loads(message.content), schema)
        streamed = {"reasoning_content": "", "content": ""}
        for chunk in client.chat.completions.create(**kwargs, stream=True):
            for choice in chunk.choices:
                streamed["content"] += choice.delta.content or ""
                streamed["reasoning_content"] += (choice.delta.model_extra or {}).get("reasoning_content") or ""
        assert streamed == {"reasoning_content": reasoning, "content": message.content}
