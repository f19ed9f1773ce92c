"""A Responses API request as a ``ChatQuery``: its input items as chat-template messages, its function
tools, tool_choice and text format in the shapes the chat pipeline takes.

Items: messages (any role; ``developer`` is the system role), ``function_call`` items (the assistant's
calls, joined to its turn), ``function_call_output`` items (tool messages) and ``reasoning`` items
(the thinking of the assistant turn that follows). The server keeps no responses, so an
``item_reference`` cannot be resolved: a 400 asks for the item itself.
"""

from __future__ import annotations

from typing import Any

from engine import StructuredOutputsParams

from ..chat_pipeline import ChatQuery, function_tool, joined_text, template_tool_call
from ..errors import APIError
from ..structured import json_schema_params
from .protocol import ResponsesRequest

TEXT_PARTS = ("input_text", "output_text", "text", "refusal", "reasoning_text", "summary_text")
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


def responses_query(body: ResponsesRequest) -> ChatQuery:
    choice, name = _tool_choice(body.tool_choice)
    return ChatQuery(
        messages=_messages(body), tools=_tools(body.tools), tool_choice=choice, tool_name=name,
        parallel_tool_calls=body.parallel_tool_calls, constraint=_text_format(body.text),
        max_tokens=body.max_output_tokens, template_kwargs=body.chat_template_kwargs or {})


def check_stateless(body: ResponsesRequest) -> None:
    """This server keeps no responses: refuse what would need them, naming the field."""
    if body.previous_response_id is not None:
        raise APIError("this server is stateless and keeps no responses, so previous_response_id cannot be "
                       "resolved: send the whole conversation as input", param="previous_response_id")
    if body.store:
        raise APIError("this server is stateless and keeps no responses: send store: false (or leave it out)",
                       param="store")
    if body.conversation is not None:
        raise APIError("this server is stateless and keeps no conversations: send the whole conversation as input",
                       param="conversation")
    if body.background:
        raise APIError("background responses are not supported: this server keeps no responses", param="background")


def _messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        return [*messages, {"role": "user", "content": body.input}]
    thinking = None  # a reasoning item's text, for the assistant turn that follows it
    for index, item in enumerate(body.input):
        field = f"input.{index}"
        if not isinstance(item, dict):
            raise APIError("each input item must be an object", param=field)
        kind = item.get("type", "message")
        if kind == "item_reference":
            raise APIError("this server is stateless and keeps no items: send the item itself, not a reference",
                           param=f"{field}.type")
        if kind not in ITEM_TYPES:
            raise APIError(f"unknown input item type {kind!r}; this server takes {list(ITEM_TYPES)}",
                           param=f"{field}.type")
        if kind == "reasoning":
            thinking = _text(item.get("content") or item.get("summary") or [], f"{field}.content")
            continue
        if kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": _text(item.get("output"), f"{field}.output")})
            continue
        if kind == "message" and item.get("role") != "assistant":
            role = item.get("role")
            if role not in ("user", "system", "developer"):
                raise APIError(f"role must be 'user', 'assistant', 'system' or 'developer', got {role!r}",
                               param=f"{field}.role")
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _text(item.get("content"), f"{field}.content")})
            continue
        # the assistant's turn: its message and the function calls after it are one template message
        if not (messages and messages[-1]["role"] == "assistant" and kind == "function_call"):
            messages.append({"role": "assistant", "content": ""})
        turn = messages[-1]
        if thinking is not None:
            turn["reasoning_content"], thinking = thinking, None
        if kind == "message":
            turn["content"] += _text(item.get("content"), f"{field}.content")
        else:
            turn.setdefault("tool_calls", []).append(
                template_tool_call(item.get("call_id"), item.get("name"), item.get("arguments", ""), field))
    return messages


def _text(content: Any, field: str) -> str:
    """A message's content, a tool's output or a reasoning item's parts as one text."""
    return joined_text(content, field, TEXT_PARTS)


def _tools(tools: list[Any] | None) -> list[dict] | None:
    """Responses function tools, flat: ``{"type": "function", "name": ..., "parameters": {...}}``."""
    checked = []
    for index, tool in enumerate(tools or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise APIError(f"only function tools are supported, got a tool of type {kind!r}",
                           param=f"tools.{index}.type")
        checked.append(function_tool(tool.get("name"), tool.get("parameters"), tool.get("description"),
                                     f"tools.{index}", "parameters"))
    return checked or None


def _tool_choice(choice: Any) -> tuple[Any, str | None]:
    if choice is None or choice in ("none", "auto", "required"):
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return "function", choice["name"]
    raise APIError(f"tool_choice must be 'none', 'auto', 'required' or {{\"type\": \"function\", \"name\": ...}}, "
                   f"got {choice!r}", param="tool_choice")


def _text_format(text: dict[str, Any] | None) -> tuple[StructuredOutputsParams, str] | None:
    """``text.format``: plain text, a JSON object, or JSON following a schema."""
    spec = (text or {}).get("format")
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True), "text.format"
    if kind == "json_schema":
        return json_schema_params(spec.get("schema"), spec.get("strict"), "text.format"), "text.format"
    raise APIError(f"text.format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                   param="text.format.type")
