"""POST /v1/responses through a real ``engine serve`` with the official openai client's ``responses.create``:
text, a function tool round trip and a JSON schema, streamed and not, on the tiny Qwen-style model
(conftest.py's ``qwen_server``)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from conftest import TEMPLATE, start_server, stop_server

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 12},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}
ASK = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def client(qwen_server):
    return openai.OpenAI(base_url=f"{qwen_server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def thinking_server(qwen_style_model, tmp_path_factory):
    """The same model under a template whose generation prompt opens ``<think>``, as DeepSeek-R1's does
    (given with --chat-template): every reply starts in its thinking."""
    folder = tmp_path_factory.mktemp("tiny-r1")
    template = TEMPLATE.read_text().replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'")
    assert "<think>" in template
    (folder / "r1.jinja").write_text(template)
    server = start_server(qwen_style_model, folder / "server.log", "--served-model-name", "tiny-r1",
                          "--chat-template", str(folder / "r1.jinja"), "--enforce-eager", "--max-model-len", "512",
                          "--reasoning-parser", "deepseek_r1")
    yield server
    stop_server(server)


def without_ids(items: list) -> list[dict]:
    """Output items as data, less the ids each response draws afresh."""
    return [{k: v for k, v in item.model_dump(exclude_none=True).items() if k not in ("id", "call_id")}
            for item in items]


def streamed(client, **kwargs):
    """The events of a streamed response, and the final response they end with."""
    events = list(client.responses.create(**kwargs, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert events[-1].type in ("response.completed", "response.incomplete")
    return events, events[-1].response


def check_item_events(events) -> None:
    """Each item is added, filled and done in order, and its deltas add up to the done item."""
    open_items: dict[int, str] = {}
    text: dict[int, str] = {}
    for event in events[2:-1]:
        if event.type == "response.output_item.added":
            assert event.output_index == len(text) and event.item.status == "in_progress"
            open_items[event.output_index], text[event.output_index] = event.item.id, ""
        elif event.type.endswith(".delta"):
            assert event.item_id == open_items[event.output_index]
            text[event.output_index] += event.delta
        elif event.type == "response.output_item.done":
            item = event.item
            assert item.id == open_items.pop(event.output_index) and item.status == "completed"
            whole = item.arguments if item.type == "function_call" else "".join(p.text for p in item.content)
            assert whole == text[event.output_index]
    assert not open_items


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_text_streams_the_response_it_returns(client, qwen_server, seed):
    kwargs = dict(model=qwen_server.model, input=ASK, instructions="Answer briefly.", max_output_tokens=12,
                  temperature=0.9, top_p=0.95, extra_body={"seed": seed})
    whole = client.responses.create(**kwargs)
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert whole.usage.output_tokens == 12 and whole.usage.input_tokens > 10
    assert whole.output and {item.type for item in whole.output} <= {"message", "reasoning"}
    events, final = streamed(client, **kwargs)
    check_item_events(events)
    assert final.status == "incomplete" and without_ids(final.output) == without_ids(whole.output)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text


def test_thinking_comes_back_as_a_reasoning_item(thinking_server):
    client = openai.OpenAI(base_url=f"{thinking_server.url}/v1", api_key="unused", max_retries=0)
    kwargs = dict(model=thinking_server.model, input=ASK, max_output_tokens=10, temperature=0.0)
    whole = client.responses.create(**kwargs)
    (item,) = whole.output
    assert item.type == "reasoning" and item.content[0].type == "reasoning_text" and item.content[0].text
    assert 0 < whole.usage.output_tokens_details.reasoning_tokens <= 10 and whole.output_text == ""
    events, final = streamed(client, **kwargs)
    check_item_events(events)
    assert without_ids(final.output) == without_ids(whole.output)
    assert {e.type for e in events} >= {"response.content_part.added", "response.reasoning_text.delta",
                                        "response.reasoning_text.done", "response.content_part.done"}


def test_a_function_call_and_its_output_round_trip(client, qwen_server):
    kwargs = dict(model=qwen_server.model, input=ASK, tools=[WEATHER], tool_choice="required",
                  parallel_tool_calls=False, max_output_tokens=100, temperature=0.8, extra_body={"seed": 3})
    first = client.responses.create(**kwargs)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert first.status == "completed" and call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    events, final = streamed(client, **kwargs)
    check_item_events(events)
    assert without_ids(final.output) == without_ids(first.output)
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == call.arguments

    conversation = [{"role": "user", "content": ASK}, *[item.model_dump(exclude_none=True) for item in first.output],
                    {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 21}'}]
    second = client.responses.create(model=qwen_server.model, input=conversation, tools=[WEATHER],
                                     max_output_tokens=5, temperature=0.0)
    # the template rendered the call and its result after the first prompt, which the prefix cache kept
    assert second.usage.input_tokens > first.usage.input_tokens + len(call.arguments) // 4
    assert second.usage.input_tokens_details.cached_tokens >= 16


def test_a_json_schema_text_format_holds_streamed_and_not(client, qwen_server):
    schema = {"type": "object", "additionalProperties": False, "required": ["answer", "score"],
              "properties": {"answer": {"type": "string", "maxLength": 20},
                             "score": {"type": "integer", "minimum": 0, "maximum": 9}}}
    kwargs = dict(model=qwen_server.model, input=ASK, max_output_tokens=200, temperature=0.8, extra_body={"seed": 4},
                  text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}})
    whole = client.responses.create(**kwargs)
    assert whole.status == "completed"
    jsonschema.validate(json.loads(whole.output_text), schema)
    events, final = streamed(client, **kwargs)
    assert final.output_text == whole.output_text


@pytest.mark.parametrize("extra, field", [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"input": [{"type": "computer_call_output", "call_id": "x"}]}, "input.0.type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input.0.content.0"),
    ({"tools": [{"type": "function", "name": "f", "parameters": "not a schema"}]}, "tools.0.parameters"),
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "objekt"}}}}, "text.format"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": -1}, "temperature"),
])
def test_bad_requests_are_400s_in_openai_shape(qwen_server, extra, field):
    body = {"model": qwen_server.model, "input": ASK, "max_output_tokens": 4, **extra}
    for stream in (False, True):
        reply = httpx.post(f"{qwen_server.url}/v1/responses", json={**body, "stream": stream}, timeout=60)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["param"] == field and error["type"] == "invalid_request_error" and error["message"]
