"""Tool calls in a model's output text: the Hermes/Qwen ``<tool_call>`` JSON format and Llama 3's JSON.

A parser reads the whole output so far and says what is decided: the content outside calls (a partial
tag at the end held back, trailing whitespace too), and each call's name and the raw text of its
arguments as far as it goes. What is decided only grows as text arrives, so a stream sends the
difference each time (``ToolCallStream``) and the deltas add up to the final parse however the text
was cut: 1 token at a time or 8. The arguments are the model's own text, never re-serialized.

Each parser also gives the grammar that forces its format (``tool_choice`` "required" or a named
function): calls whose arguments follow the function's JSON schema, so they always parse.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from engine import StructuredOutputsParams
from engine.processing.stop_strings import undecided_tail

JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


@dataclass
class ParsedCall:
    name: str | None  # None until its string is complete
    arguments: str  # the raw JSON text of the arguments so far ("" before they start)
    complete: bool = False


@dataclass
class ParsedOutput:
    content: str  # decided content outside tool calls
    calls: list[ParsedCall] = field(default_factory=list)


class ToolParser:
    name: str
    arguments_key: str

    def parse(self, text: str, final: bool) -> ParsedOutput:
        raise NotImplementedError

    def forced_grammar(self, tools: list[dict], parallel: bool) -> StructuredOutputsParams:
        """Output that is only tool calls of ``tools`` in this format: one, or (``parallel``) one or more."""
        raise NotImplementedError

    def call_schema(self, tools: list[dict]) -> dict:
        variants = [{
            "type": "object", "additionalProperties": False, "required": ["name", self.arguments_key],
            "properties": {"name": {"const": tool["function"]["name"]},
                           self.arguments_key: tool["function"].get("parameters") or {"type": "object"}},
        } for tool in tools]
        schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
        return {**schema, "x-guidance": JSON_STYLE}


class HermesToolParser(ToolParser):
    """``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, as Qwen2.5, Qwen3 and Hermes write."""

    name = "hermes"
    arguments_key = "arguments"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def parse(self, text: str, final: bool) -> ParsedOutput:
        content, calls, position = [], [], 0
        while True:
            start = text.find(self.OPEN, position)
            if start < 0:
                tail = text[position:]
                content.append(tail if final else tail[: len(tail) - undecided_tail(tail, (self.OPEN,))])
                break
            content.append(text[position:start])
            body_start = start + len(self.OPEN)
            end = text.find(self.CLOSE, body_start)
            body = text[body_start:] if end < 0 else text[body_start:end]
            calls.append(_call_in(body, 0, self.arguments_key, complete=end >= 0))
            if end < 0:
                break
            position = end + len(self.CLOSE)
        # trailing whitespace is held back: sent once more content follows, dropped at the end
        return ParsedOutput("".join(content).rstrip(), [c for c in calls if c is not None])

    def forced_grammar(self, tools: list[dict], parallel: bool) -> StructuredOutputsParams:
        repeat = ' ("\\n" call)*' if parallel else ""
        lark = (f'start: call{repeat}\ncall: "{self.OPEN}\\n" body "\\n{self.CLOSE}"\n'
                f"body: %json {json.dumps(self.call_schema(tools))}")
        return StructuredOutputsParams(grammar=lark)


class Llama3JsonToolParser(ToolParser):
    """Llama 3.x JSON calls: ``{"name": ..., "parameters": {...}}``, several joined by ``; ``, optionally after
    ``<|python_tag|>``. Output that does not open with ``{`` is content."""

    name = "llama3_json"
    arguments_key = "parameters"
    TAG = "<|python_tag|>"

    def parse(self, text: str, final: bool) -> ParsedOutput:
        stripped = text.lstrip()
        if stripped.startswith(self.TAG):
            stripped = stripped[len(self.TAG):].lstrip()
        elif not final and undecided_tail(stripped, (self.TAG,)) == len(stripped):
            return ParsedOutput("")  # nothing but (part of) the tag yet: undecided
        if not stripped.startswith("{"):
            return ParsedOutput(text.rstrip() if stripped else "")
        calls, position = [], len(text) - len(stripped)
        while position < len(text):
            call = _call_in(text, position, self.arguments_key, complete=True)
            if call is None or not call.complete:
                if call is not None:
                    calls.append(call)
                break
            calls.append(call)
            position = _object_end(text, position)
            position = _skip(text, position, " \n\t;")
        return ParsedOutput("", calls)

    def forced_grammar(self, tools: list[dict], parallel: bool) -> StructuredOutputsParams:
        repeat = ' ("; " call)*' if parallel else ""
        return StructuredOutputsParams(grammar=f"start: call{repeat}\ncall: %json {json.dumps(self.call_schema(tools))}")


PARSERS: dict[str, type[ToolParser]] = {"hermes": HermesToolParser, "llama3_json": Llama3JsonToolParser}


def parser_for_template(chat_template: str | None) -> str:
    """The parser a model's chat template asks for: Llama 3's JSON format or (by default) Hermes tags."""
    if chat_template and "<tool_call>" not in chat_template and (
            "<|python_tag|>" in chat_template or '"parameters": dictionary of argument name' in chat_template):
        return "llama3_json"
    return "hermes"


class ToolCallStream:
    """Turns a growing output text into OpenAI ``delta`` pieces: content, then for each call its id, type
    and name, then argument fragments."""

    def __init__(self, parser: ToolParser, call_ids: list[str]) -> None:
        self.parser, self.call_ids = parser, call_ids
        self.text = ""
        self.sent_content = 0
        self.sent_names: list[bool] = []
        self.sent_arguments: list[int] = []

    def feed(self, delta: str, final: bool = False) -> list[dict]:
        """The deltas this text adds (``final``: the output is complete, send everything held back)."""
        self.text += delta
        parsed = self.parser.parse(self.text, final)
        pieces = []
        if len(parsed.content) > self.sent_content:
            pieces.append({"content": parsed.content[self.sent_content:]})
            self.sent_content = len(parsed.content)
        for index, call in enumerate(parsed.calls):
            if index == len(self.sent_names):
                self.sent_names.append(False)
                self.sent_arguments.append(0)
            if call.name is None:
                continue
            piece: dict[str, Any] = {"index": index}
            if not self.sent_names[index]:
                piece.update(id=self.call_id(index), type="function")
                piece["function"] = {"name": call.name, "arguments": ""}
                self.sent_names[index] = True
            fragment = call.arguments[self.sent_arguments[index]:]
            if fragment:
                piece.setdefault("function", {})["arguments"] = fragment
                self.sent_arguments[index] = len(call.arguments)
            if len(piece) > 1:
                pieces.append({"tool_calls": [piece]})
        return pieces

    def call_id(self, index: int) -> str:
        while len(self.call_ids) <= index:
            self.call_ids.append(new_call_id())
        return self.call_ids[index]


def final_tool_calls(parsed: ParsedOutput, call_ids: list[str]) -> list[dict]:
    """OpenAI ``tool_calls`` of a whole output: the calls that have a name."""
    named = [call for call in parsed.calls if call.name is not None]
    while len(call_ids) < len(named):
        call_ids.append(new_call_id())
    return [{"id": call_ids[i], "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for i, call in enumerate(named)]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# ---- a small incremental reader of one JSON object's top-level fields ----

def _call_in(text: str, start: int, arguments_key: str, complete: bool) -> ParsedCall | None:
    """The call in the object opening at or after ``start`` (whitespace first); None if none opens yet."""
    position = _skip(text, start, " \n\t")
    if position >= len(text) or text[position] != "{":
        return None
    fields, closed = _fields(text, position)
    name = None
    if "name" in fields and fields["name"][1] is not None:
        try:
            value = json.loads(text[fields["name"][0]:fields["name"][1]])
            name = value if isinstance(value, str) else None
        except ValueError:
            name = None
    arguments = ""
    if arguments_key in fields:
        begin, end = fields[arguments_key]
        arguments = text[begin:] if end is None else text[begin:end]
    return ParsedCall(name, arguments, complete=closed and complete)


def _fields(text: str, position: int) -> tuple[dict[str, tuple[int, int | None]], bool]:
    """Top-level keys of the object at ``position`` -> (value start, value end or None while open);
    and whether the object is closed."""
    fields: dict[str, tuple[int, int | None]] = {}
    position += 1
    while True:
        position = _skip(text, position, " \n\t,")
        if position >= len(text):
            return fields, False
        if text[position] == "}":
            return fields, True
        key_end = _value_end(text, position)
        if key_end is None or text[position] != '"':
            return fields, False
        key = json.loads(text[position:key_end])
        position = _skip(text, key_end, " \n\t")
        if position >= len(text) or text[position] != ":":
            return fields, False
        value_start = _skip(text, position + 1, " \n\t")
        if value_start >= len(text):
            return fields, False
        value_end = _value_end(text, value_start)
        fields[key] = (value_start, value_end)
        if value_end is None:
            return fields, False
        position = value_end


def _value_end(text: str, position: int) -> int | None:
    """Where the JSON value at ``position`` ends (exclusive); None if the text stops inside it."""
    first = text[position]
    if first == '"':
        index = position + 1
        while index < len(text):
            if text[index] == "\\":
                index += 2
                continue
            if text[index] == '"':
                return index + 1
            index += 1
        return None
    if first in "{[":
        depth, index, in_string = 0, position, False
        while index < len(text):
            char = text[index]
            if in_string:
                if char == "\\":
                    index += 1
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    return index + 1
            index += 1
        return None
    index = position  # a number or a literal: ends at a delimiter
    while index < len(text) and text[index] not in ",}] \n\t":
        index += 1
    return index if index < len(text) else None


def _object_end(text: str, position: int) -> int:
    return _value_end(text, _skip(text, position, " \n\t")) or len(text)


def _skip(text: str, position: int, characters: str) -> int:
    while position < len(text) and text[position] in characters:
        position += 1
    return position
