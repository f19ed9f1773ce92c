"""An Anthropic Messages request as a ``ChatQuery``: the system prompt and content blocks as
chat-template messages, client tools and tool_choice in the shapes the chat pipeline takes.

User turns: ``text`` blocks, and ``tool_result`` blocks, which become tool messages ahead of the turn's
text. Assistant turns: ``text``, ``tool_use`` (the template's tool calls) and ``thinking`` (the turn's
reasoning). Images and documents are refused by name. A last assistant turn is a prefill: the reply
continues it, as in Anthropic's API.
"""

from __future__ import annotations

from typing import Any

from engine import StructuredOutputsParams

from ..chat_pipeline import ChatQuery, function_tool, joined_text, template_tool_call
from ..errors import APIError
from ..structured import json_schema_params
from .protocol import CountTokensRequest

USER_BLOCKS = ("text", "tool_result")
ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")


def messages_query(body: CountTokensRequest, max_tokens: int | None = None) -> ChatQuery:
    choice, name, parallel = _tool_choice(body.tool_choice)
    thinking = (body.thinking or {}).get("type")
    template_kwargs = {} if thinking is None else {"enable_thinking": thinking != "disabled"}
    prefilled = body.messages[-1].role == "assistant"  # the reply continues the last assistant turn
    return ChatQuery(messages=_messages(body), tools=_tools(body.tools), tool_choice=choice, tool_name=name,
                     parallel_tool_calls=parallel, constraint=_output_format(body.output_config),
                     max_tokens=max_tokens, template_kwargs=template_kwargs, add_generation_prompt=not prefilled,
                     continue_final_message=prefilled)


def _messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.system:
        messages.append({"role": "system", "content": _text(body.system, "system")})
    for index, message in enumerate(body.messages):
        field = f"messages.{index}.content"
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
            continue
        allowed = USER_BLOCKS if message.role == "user" else ASSISTANT_BLOCKS
        turn: dict[str, Any] = {"role": message.role, "content": ""}
        for number, block in enumerate(message.content):
            at = f"{field}.{number}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind not in allowed:
                raise APIError(f"{message.role} content blocks of type {kind!r} are not supported here "
                               f"(only {list(allowed)})", param=f"{at}.type")
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    raise APIError("a text block needs its text (a string)", param=f"{at}.text")
                turn["content"] += block["text"]
            elif kind == "tool_result":
                messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                                 "content": _text(block.get("content", ""), f"{at}.content")})
            elif kind == "tool_use":
                turn.setdefault("tool_calls", []).append(
                    template_tool_call(block.get("id"), block.get("name"), block.get("input", {}), at))
            elif kind == "thinking":
                turn["reasoning_content"] = turn.get("reasoning_content", "") + str(block.get("thinking", ""))
        if turn["content"] or "tool_calls" in turn or message.role == "assistant":
            messages.append(turn)
    return messages


def _text(content: Any, field: str) -> str:
    return joined_text(content, field, ("text",))


def _tools(tools: list[Any] | None) -> list[dict] | None:
    """Client tools: ``{"name": ..., "description": ..., "input_schema": {...}}``."""
    checked = []
    for index, tool in enumerate(tools or []):
        field = f"tools.{index}"
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise APIError(f"only client tools (type 'custom') are supported, got {kind!r}", param=f"{field}.type")
        if "input_schema" not in tool:
            raise APIError("a tool needs an input_schema (a JSON schema)", param=f"{field}.input_schema")
        checked.append(function_tool(tool.get("name"), tool["input_schema"], tool.get("description"), field,
                                     "input_schema"))
    return checked or None


def _tool_choice(choice: Any) -> tuple[Any, str | None, bool]:
    """(the pipeline's tool_choice, the tool it names, whether calls may be parallel)."""
    if choice is None:
        return None, None, True
    kind = choice.get("type") if isinstance(choice, dict) else None
    parallel = not (isinstance(choice, dict) and choice.get("disable_parallel_tool_use"))
    if kind in ("auto", "none"):
        return kind, None, parallel
    if kind == "any":
        return "required", None, parallel
    if kind == "tool" and isinstance(choice.get("name"), str):
        return "function", choice["name"], parallel
    raise APIError(f"tool_choice must be {{\"type\": \"auto\"}}, {{\"type\": \"any\"}}, {{\"type\": \"none\"}} or "
                   f"{{\"type\": \"tool\", \"name\": ...}}, got {choice!r}", param="tool_choice")


def _output_format(config: dict[str, Any] | None) -> tuple[StructuredOutputsParams, str] | None:
    """``output_config.format``: JSON following a schema, as Anthropic's structured outputs."""
    spec = (config or {}).get("format")
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") != "json_schema":
        raise APIError("output_config.format must be {\"type\": \"json_schema\", \"schema\": {...}}",
                       param="output_config.format")
    return json_schema_params(spec.get("schema"), True, "output_config.format"), "output_config.format"
