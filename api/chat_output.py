"""One chat choice's output text -> the assistant message: reasoning, content and tool calls.

Non-streamed, ``message`` splits the whole text. Streamed, ``feed`` takes each new piece of text and
returns the ``delta`` objects it adds; both go through the same parsers, so a stream's deltas add up
to the message (see api/reasoning.py and api/tool_parsers.py for why that holds however the text
is cut).
"""

from __future__ import annotations

from typing import Any

from .reasoning import ReasoningParser
from .tool_parsers import ToolCallStream, ToolParser, final_tool_calls


class ChatOutput:
    def __init__(self, reasoning: ReasoningParser | None, tools: ToolParser | None) -> None:
        self.reasoning, self.tools = reasoning, tools
        self.text = ""
        self.sent_reasoning = 0
        self.sent_content = 0  # content handed on (to the client, or to the tool-call stream)
        self.call_ids: list[str] = []
        self.tool_stream = None if tools is None else ToolCallStream(tools, self.call_ids)
        self.made_calls = False

    def message(self, text: str) -> dict[str, Any]:
        """The whole assistant message of an output."""
        reasoning, content = self._split(text, final=True)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.reasoning is not None:
            message["reasoning_content"] = reasoning or None
        if self.tools is not None:
            parsed = self.tools.parse(content, final=True)
            calls = final_tool_calls(parsed, self.call_ids)
            message["content"] = parsed.content or None
            if calls:
                message["tool_calls"] = calls
                self.made_calls = True
        return message

    def feed(self, delta: str, final: bool = False) -> list[dict[str, Any]]:
        """The ``delta`` objects that ``delta`` (the output's new text) adds."""
        self.text += delta
        reasoning, content = self._split(self.text, final)
        pieces = []
        if len(reasoning) > self.sent_reasoning:
            pieces.append({"reasoning_content": reasoning[self.sent_reasoning:]})
            self.sent_reasoning = len(reasoning)
        new_content = content[self.sent_content:]
        self.sent_content = len(content)
        if self.tool_stream is None:
            if new_content:
                pieces.append({"content": new_content})
        else:
            tool_pieces = self.tool_stream.feed(new_content, final)
            self.made_calls = self.made_calls or any("tool_calls" in piece for piece in tool_pieces)
            pieces += tool_pieces
        return pieces

    def finish_reason(self, reason: str | None) -> str | None:
        """OpenAI's reason: "tool_calls" when the output made calls and ended on its own."""
        return "tool_calls" if self.made_calls and reason == "stop" else reason

    def _split(self, text: str, final: bool) -> tuple[str, str]:
        if self.reasoning is None:
            return "", text
        split = self.reasoning.split(text, final)
        return split.reasoning, split.content
