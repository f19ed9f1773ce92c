"""Prompt (text, token ids, or chat messages) -> validated token ids."""

from __future__ import annotations

from typing import Any, Union

from .tokenizer import Tokenizer

# What generate() accepts for one prompt: text, or {"prompt_token_ids": [...]} (optionally with "prompt").
PromptType = Union[str, dict[str, Any]]


class InputProcessor:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size

    def process(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        """(prompt text if any, token ids); ``ValueError`` for an empty or malformed prompt (its length is
        the engine's ``check_request``)."""
        if isinstance(prompt, str):
            text, token_ids = prompt, self.tokenizer.encode(prompt)
        elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            text, token_ids = prompt.get("prompt"), list(prompt["prompt_token_ids"])
        elif isinstance(prompt, dict) and "prompt" in prompt:
            text, token_ids = prompt["prompt"], self.tokenizer.encode(prompt["prompt"])
        else:
            raise ValueError(f"a prompt is a string or a dict with 'prompt_token_ids', got {type(prompt).__name__}")
        self.validate(token_ids)
        return text, token_ids

    def validate(self, token_ids: list[int]) -> None:
        bad = [t for t in token_ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt_token_ids holds {bad[0]!r}, outside the vocabulary [0, {self.vocab_size})")
        if not token_ids:
            raise ValueError("the prompt is empty: it must hold at least one token")

    def render_chat(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> tuple[str, list[int]]:
        """The chat template's text and its tokens, not yet length-checked."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  **{"add_generation_prompt": True, **template_kwargs})
        # The template already wrote the special tokens (BOS and the like).
        return text, self.tokenizer.encode(text, add_special_tokens=False)
