"""A chat output as a sequence of blocks (thinking, text, one per tool call) that open, grow and close
one at a time: the shape of the Responses API's output items and of Anthropic's content blocks.

``OutputBlocks`` reads the deltas of a ``ChatOutput``; a non-streamed reply feeds the whole text at
once and takes ``blocks``, a stream sends the events as they come, so the stream's pieces add up to
the reply (the parsers underneath guarantee it however the text is cut).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .chat_output import ChatOutput

BlockKind = Literal["reasoning", "text", "tool_call"]


@dataclass
class Block:
    kind: BlockKind
    text: str = ""  # the thinking, the text, or the call's arguments (JSON text) so far
    call_id: str = ""
    name: str = ""


@dataclass
class BlockEvent:
    kind: Literal["start", "delta", "stop"]
    index: int  # the block's position in the output
    block: Block  # start: a copy as it opened (empty); stop: the whole block
    delta: str = ""


class OutputBlocks:
    def __init__(self, output: ChatOutput) -> None:
        self.output = output
        self.blocks: list[Block] = []
        self.open = False  # whether the last block is still growing
        self.call_blocks: dict[int, int] = {}  # tool call index -> block index

    def feed(self, text: str, final: bool = False) -> list[BlockEvent]:
        """The events that ``text`` (the output's new text) adds; ``final`` closes the last block."""
        events: list[BlockEvent] = []
        for piece in self.output.feed(text, final):
            if piece.get("reasoning_content"):
                events += self._grow("reasoning", piece["reasoning_content"])
            if piece.get("content"):
                events += self._grow("text", piece["content"])
            for call in piece.get("tool_calls", ()):
                events += self._call(call)
        if final:
            events += self._close()
        return events

    def made_calls(self) -> bool:
        return self.output.made_calls

    def _grow(self, kind: BlockKind, delta: str) -> list[BlockEvent]:
        events = []
        if not (self.open and self.blocks[-1].kind == kind):
            events += self._open(Block(kind))
        block = self.blocks[-1]
        block.text += delta
        return [*events, BlockEvent("delta", len(self.blocks) - 1, block, delta)]

    def _call(self, call: dict) -> list[BlockEvent]:
        events = []
        if "id" in call:  # a call's first piece: its id and name
            events += self._open(Block("tool_call", call_id=call["id"], name=call["function"]["name"]))
            self.call_blocks[call["index"]] = len(self.blocks) - 1
        fragment = call.get("function", {}).get("arguments", "")
        if fragment:
            index = self.call_blocks[call["index"]]
            self.blocks[index].text += fragment
            events.append(BlockEvent("delta", index, self.blocks[index], fragment))
        return events

    def _open(self, block: Block) -> list[BlockEvent]:
        events = self._close()
        self.blocks.append(block)
        self.open = True
        return [*events, BlockEvent("start", len(self.blocks) - 1, replace(block))]

    def _close(self) -> list[BlockEvent]:
        if not self.open:
            return []
        self.open = False
        return [BlockEvent("stop", len(self.blocks) - 1, self.blocks[-1])]
