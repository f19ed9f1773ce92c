"""Structured outputs over HTTP with the official openai client and OIP: the default model's outputs
parse and validate under generated schemas, streamed and not, at temperature 0.8; every spelling of a
constraint works; a grammar that cannot compile is a 400 naming the field the client used."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest

from benchmarks.json_schemas import make_schemas


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def schema_format(schema: dict, strict: bool = True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "record", "schema": schema, "strict": strict}}


def test_chat_json_schema_outputs_validate_streamed_and_not(server, client):
    for seed, schema in enumerate(make_schemas(3, first_seed=41)):
        messages = [{"role": "user", "content": "Reply with one JSON record."}]
        kwargs = dict(model=server.model, messages=messages, temperature=0.8, seed=seed, max_tokens=400,
                      response_format=schema_format(schema))
        reply = client.chat.completions.create(**kwargs)
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            **kwargs, stream=True) if chunk.choices)
        assert streamed == reply.choices[0].message.content  # the same seed: the same tokens


def test_every_spelling_of_a_constraint(server, client):
    chat = dict(model=server.model, messages=[{"role": "user", "content": "Pick one."}], temperature=0.8,
                max_tokens=60)
    answer = client.chat.completions.create(**chat, extra_body={"guided_choice": ["red", "green", "blue"]})
    assert answer.choices[0].message.content in ("red", "green", "blue")
    answer = client.chat.completions.create(**chat, extra_body={"structured_outputs": {"regex": r"[A-Z]{3}-\d{2}"}})
    assert re.fullmatch(r"[A-Z]{3}-\d{2}", answer.choices[0].message.content)
    answer = client.chat.completions.create(**{**chat, "max_tokens": 300}, response_format={"type": "json_object"})
    assert isinstance(json.loads(answer.choices[0].message.content), dict) or answer.choices[0].finish_reason == "length"
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    completion = client.completions.create(model=server.model, prompt="A number as JSON:", max_tokens=40,
                                           temperature=0.8, extra_body={"guided_json": json.dumps(schema)})
    jsonschema.validate(json.loads(completion.choices[0].text), schema)
    oip = httpx.post(f"{server.url}/v2/models/{server.model}/generate", timeout=60, json={
        "text_input": "Yes or no?", "parameters": {"max_tokens": 10, "guided_choice": json.dumps(["yes", "no"]),
                                                   "exclude_input_in_output": True}})
    assert oip.status_code == 200 and oip.json()["text_output"] in ("yes", "no")


@pytest.mark.parametrize("extra, field", [
    ({"response_format": schema_format({"type": "objekt"})}, "response_format"),
    ({"guided_regex": "(("}, "guided_regex"),
    ({"structured_outputs": {"grammar": "start: nowhere"}}, "structured_outputs"),
    ({"guided_choice": ["a"], "guided_regex": "a"}, "guided_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
])
def test_a_constraint_that_cannot_compile_is_a_400_naming_its_field(server, extra, field):
    body = {"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, **extra}
    for stream in (False, True):
        reply = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": stream}, timeout=60)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == field


def test_oip_rejects_a_bad_schema_with_400(server):
    for route in ("generate", "generate_stream"):
        reply = httpx.post(f"{server.url}/v2/models/{server.model}/{route}", timeout=60, json={
            "text_input": "x", "parameters": {"guided_json": '{"type": "objekt"}'}})
        assert reply.status_code == 400 and "cannot be compiled" in reply.json()["error"]
