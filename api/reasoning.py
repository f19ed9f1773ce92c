"""Reasoning models' thinking, split from the answer: ``<think> ... </think>`` (Qwen3, DeepSeek-R1).

The output is in its thinking from the start when the prompt leaves a ``<think>`` open (DeepSeek-R1's
template ends with one) or when the output opens one itself (Qwen3). Thinking ends at the first
``</think>``: whatever follows is the answer, however much of it looks like JSON or like another tag.
Like the tool parsers, ``split`` reads the whole output so far and says only what is decided, so a
stream sends the difference and its pieces add up to the final split.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.processing.stop_strings import undecided_tail

START, END = "<think>", "</think>"
PARSERS = ("qwen3", "deepseek_r1")  # one format; the prompt tells where the output starts


@dataclass
class Split:
    reasoning: str
    content: str
    reasoning_ended: bool


def prompt_leaves_thinking_open(prompt: str) -> bool:
    return prompt.rfind(START) > prompt.rfind(END)


def prompt_closes_thinking(prompt: str) -> bool:
    """The prompt ends a (maybe empty) thinking block: the output is all answer (Qwen3 with thinking off)."""
    return prompt.rfind(END) > prompt.rfind(START) >= 0


class ReasoningParser:
    def __init__(self, prompt: str) -> None:
        self.starts_in_thinking = prompt_leaves_thinking_open(prompt)
        self.no_thinking = prompt_closes_thinking(prompt)

    def split(self, text: str, final: bool) -> Split:
        body = text
        if not self.starts_in_thinking:
            stripped = text.lstrip()
            if self.no_thinking or not (stripped.startswith(START) or (not final and START.startswith(stripped))):
                return Split("", text, True)
            if not stripped.startswith(START):
                return Split("", "", False)  # whitespace or part of the tag so far: undecided
            body = stripped[len(START):]
        end = body.find(END)
        if end < 0:
            held = 0 if final else undecided_tail(body, (END,))
            return Split(body[: len(body) - held], "", False)
        return Split(body[:end], body[end + len(END):].lstrip(), True)
