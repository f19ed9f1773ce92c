"""Render a model's Jinja chat template as transformers does, inside Jinja's immutable sandbox.

Chat templates come with downloaded models, so they are untrusted code: the sandbox refuses
attribute access to Python internals, and everything a template sees is rebuilt from plain JSON
types first. The environment matches transformers' (``trim_blocks``, ``lstrip_blocks``, loop
controls, ``tojson`` without HTML escaping, ``raise_exception``, ``strftime_now``, and the
``{% generation %}`` tag rendered as its body), so a template renders the same text under either.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The fields a message's reasoning arrives under; templates read the first (gpt-oss reads "thinking").
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; here it
    renders its body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _Namespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore names, the way into Python's internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature trick: ``namespace(self=...)`` works
        self, values = args[0], dict(*args[1:], **kwargs)
        for name in values:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, values)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set {name!r} on a namespace")


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=_Namespace)
    return environment.from_string(source)


def plain(value: Any) -> Any:
    """``value`` rebuilt from JSON types (pydantic models dumped first): a template sees no object
    whose methods the sandbox does not know."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (str, bool, int, float):  # subclasses (enums, numpy scalars) back to the base type
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Mapping):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if callable(getattr(value, "model_dump", None)):
        return plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _messages(conversation: list[Any]) -> list[dict[str, Any]]:
    """Plain message dicts without ``None`` values (templates print ``None`` or fail on them, and
    handle a missing key), with the reasoning under each name templates read."""
    messages = []
    for message in plain(conversation):
        if not isinstance(message, dict):
            raise ValueError(f"chat messages must be objects, got {message!r}")
        message = {key: value for key, value in message.items() if value is not None}
        reasoning = next((message[key] for key in _REASONING_FIELDS if key in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        messages.append(message)
    return messages


def render_chat(template: str, conversation: list[Any], *, add_generation_prompt: bool = False,
                continue_final_message: bool = False, tools: list[dict] | None = None,
                documents: list[dict] | None = None, **variables: Any) -> str:
    """The prompt text ``template`` writes for ``conversation``; ``continue_final_message`` cuts the
    text after the last message's content, leaving it open for the model to continue. ``ValueError``
    for messages the template cannot render (its ``raise_exception``, a sandbox refusal, bad syntax),
    so one bad conversation is rejected like a bad prompt."""
    if not conversation:
        raise ValueError("messages must hold at least one message")
    if add_generation_prompt and continue_final_message:
        raise ValueError("add_generation_prompt and continue_final_message cannot both be true")
    messages = _messages(conversation)
    if continue_final_message:
        content = messages[-1].get("content")
        if isinstance(content, list):
            text_parts = [part for part in content if isinstance(part, dict) and "text" in part]
            if not text_parts:
                raise ValueError("continue_final_message: the final message has no text to continue")
            text_parts[-1]["text"] += _CONTINUE_TAG
        elif isinstance(content, str):
            messages[-1]["content"] = content + _CONTINUE_TAG
        else:
            raise ValueError("continue_final_message: the final message has no content to continue")
    try:
        text = compile_template(template).render(
            messages=messages, tools=plain(tools), documents=plain(documents),
            add_generation_prompt=add_generation_prompt, **plain(variables))
    except Exception as err:  # the template is the model's code run on the request's messages: their fault
        raise ValueError(f"the chat template could not render the messages: {type(err).__name__}: {err}") from err
    if not continue_final_message:
        return text
    tag = text.rfind(_CONTINUE_TAG.strip())
    if tag < 0:
        raise ValueError("continue_final_message: the chat template dropped the final message's content")
    # the template keeps the tag's trailing space where it keeps the message's spacing
    return text[:tag] if text.startswith(_CONTINUE_TAG, tag) else text[:tag].rstrip()
