"""Incremental detokenization: text deltas as tokens arrive, without re-decoding everything.

Two offsets into the ids only move forward: ``prefix_offset`` starts a small window of
already-emitted tokens that gives the decoder its context (leading spaces, merges), and
``read_offset`` marks where the emitted text ends. A delta is released only when it does not
end in U+FFFD, so a UTF-8 character split over several byte tokens comes out whole.
"""

from __future__ import annotations

# How many prompt tokens seed the window, so the first generated token decodes in context.
INITIAL_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids = list(prompt_token_ids[-INITIAL_CONTEXT_TOKENS:])
        if self.token_ids and self._decode(self.token_ids).endswith("\ufffd"):
            # the prompt ends inside a UTF-8 character: the first output bytes would complete the prompt's
            # character, and the output's text would lose them; it starts on its own instead
            self.token_ids = []
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def append(self, token_id: int) -> str:
        """Add one generated token; return the new text it completes (may be empty)."""
        self.token_ids.append(token_id)
        prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.token_ids[self.prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""
        delta = full_text[len(prefix_text) :]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        self.text += delta
        return delta
