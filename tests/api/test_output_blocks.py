"""OutputBlocks: a chat output cut into thinking, text and tool-call blocks that open, grow and close in
order, the same however the text arrives (1, 3 or 8 characters at a time, or whole)."""

from __future__ import annotations

import pytest

from engine.api.chat_output import ChatOutput
from engine.api.output_blocks import OutputBlocks
from engine.api.reasoning import ReasoningParser
from engine.api.tool_parsers import HermesToolParser

OUTPUT = ('<think>Look it up.</think>Let me check. <tool_call>\n{"name": "get_weather", "arguments": '
          '{"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n'
          '</tool_call>')


def blocks_of(pieces: list[str]) -> tuple[list, list]:
    blocks = OutputBlocks(ChatOutput(ReasoningParser(prompt=""), HermesToolParser()))
    events = []
    for number, piece in enumerate(pieces):
        events += blocks.feed(piece, final=number == len(pieces) - 1)
    return blocks.blocks, events


@pytest.mark.parametrize("size", [1, 3, 8, len(OUTPUT)])
def test_blocks_open_grow_and_close_in_order_however_the_text_is_cut(size):
    blocks, events = blocks_of([OUTPUT[i:i + size] for i in range(0, len(OUTPUT), size)])
    assert [(b.kind, b.text, b.name) for b in blocks] == [
        ("reasoning", "Look it up.", ""), ("text", "Let me check.", ""),
        ("tool_call", '{"city": "Paris"}', "get_weather"), ("tool_call", '{"zone": "CET"}', "get_time")]
    assert all(b.call_id.startswith("call_") for b in blocks[2:]) and blocks[2].call_id != blocks[3].call_id
    open_index, grown = None, {}
    for event in events:
        if event.kind == "start":
            assert open_index is None and event.index == len(grown) and event.block.text == ""
            open_index, grown[event.index] = event.index, ""
        elif event.kind == "delta":
            assert event.index == open_index and event.delta
            grown[event.index] += event.delta
        else:
            assert event.index == open_index and event.block.text == grown[event.index]
            open_index = None
    assert open_index is None and [grown[i] for i in range(len(blocks))] == [b.text for b in blocks]


def test_an_output_without_thinking_or_calls_is_one_text_block():
    blocks, events = blocks_of(["Hello", " there", ""])
    assert [(b.kind, b.text) for b in blocks] == [("text", "Hello there")]
    assert [e.kind for e in events] == ["start", "delta", "delta", "stop"]
    assert blocks_of([""]) == ([], [])
