"""Tool-call parsers fed an output in deltas of 1, 3 and 8 tokens (as a stream interval or speculative
decoding cuts it) give the same calls and arguments as the whole text, and the same as each other."""

from __future__ import annotations

import json

import pytest

from engine.api.tool_parsers import PARSERS, ToolCallStream, final_tool_calls, parser_for_template
from engine.processing.detokenizer import IncrementalDetokenizer

OUTPUTS = {
    "hermes": [
        'Let me look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET", "nested": {"a": [1, "}"]}}}\n'
        "</tool_call>",
        '<tool_call>\n{"arguments": {"q": "a \\"quoted\\" <tool_call> text"}, "name": "search"}\n</tool_call>',
        "No tools needed: 2 < 3 and <tool is not a tag.",
        '<tool_call>\n{"name": "cut_off", "arguments": {"x": 1',
    ],
    "llama3_json": [
        '{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "get_time", "parameters": {"tz": "UTC"}}',
        '<|python_tag|>{"name": "search", "parameters": {"q": "{not: json}"}}',
        "Plain answer, {braces} later.",
    ],
}


def stream(parser, tokenizer, text: str, chunk: int) -> tuple[str, list[dict]]:
    """Content and calls as a client rebuilds them from the stream's deltas."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=False)
    streamer = ToolCallStream(parser, [])
    pieces = []
    for start in range(0, len(ids), chunk):
        before = len(detokenizer.text)
        for token in ids[start:start + chunk]:
            detokenizer.append(token)
        pieces += streamer.feed(detokenizer.text[before:])
    pieces += streamer.feed("", final=True)
    content, calls = "", []
    for piece in pieces:
        content += piece.get("content", "")
        for call in piece.get("tool_calls", []):
            if call["index"] == len(calls):
                calls.append({"id": call["id"], "name": call["function"]["name"], "arguments": ""})
            calls[call["index"]]["arguments"] += call["function"].get("arguments", "")
    assert detokenizer.text == text
    return content, calls


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_deltas_of_any_size_rebuild_the_whole_parse(name, default_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model)
    parser = PARSERS[name]()
    for text in OUTPUTS[name]:
        whole = parser.parse(text, final=True)
        want_calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                      for c in final_tool_calls(whole, [])]
        for chunk in (1, 3, 8):
            content, calls = stream(parser, tokenizer, text, chunk)
            assert content == whole.content, (text, chunk)
            assert [{"name": c["name"], "arguments": c["arguments"]} for c in calls] == want_calls, (text, chunk)
        for call in want_calls:  # the model's own argument text, which parses once the call is complete
            assert call["arguments"] in text
            if call["name"] != "cut_off":
                json.loads(call["arguments"])


def test_what_the_parsers_find():
    hermes = PARSERS["hermes"]()
    parsed = hermes.parse(OUTPUTS["hermes"][0], final=True)
    assert parsed.content == "Let me look that up."
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        ("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {"zone": "CET", "nested": {"a": [1, "}"]}})]
    assert hermes.parse(OUTPUTS["hermes"][2], final=True).calls == []
    assert hermes.parse("Thinking <tool_ca", final=False).content == "Thinking"  # a tag may be starting
    llama = PARSERS["llama3_json"]()
    assert [c.name for c in llama.parse(OUTPUTS["llama3_json"][0], final=True).calls] == ["get_weather", "get_time"]
    assert llama.parse(OUTPUTS["llama3_json"][2], final=True).content == OUTPUTS["llama3_json"][2]
    assert parser_for_template("... <tool_call> ...") == "hermes"
    assert parser_for_template('Respond in the format {"name": function name, "parameters": dictionary of argument '
                               'name and its value}') == "llama3_json"
