"""Scheduler budgets and pool size: frozen and validated at construction."""

from __future__ import annotations

from dataclasses import dataclass

from .block_manager import cdiv


class RequestRejected(ValueError):
    """A request these limits could never run. ``field`` names what to change (``prompt``, ``max_tokens``,
    ``n``); ``code`` is OpenAI's error code where it has one."""

    def __init__(self, field: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.field, self.code = field, code



@dataclass(frozen=True)
class SchedulerConfig:
    """What the scheduler may put into one step, and how many KV blocks exist.

    ``max_num_batched_tokens`` is the token budget of one step: decodes take one token
    each, and a prompt longer than what is left is prefilled in chunks over several steps.
    """

    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    num_blocks: int
    max_model_len: int
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "num_blocks", "max_model_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_blocks * self.block_size < self.max_model_len:
            raise ValueError(
                f"the KV cache holds {self.num_blocks * self.block_size} tokens "
                f"(num_blocks={self.num_blocks} x block_size={self.block_size}), fewer than "
                f"max_model_len={self.max_model_len}: one request could never fit. "
                "Give the cache more memory or lower max_model_len."
            )

    def check_request(self, num_tokens: int, num_seqs: int = 1, max_new_tokens: int | None = None) -> None:
        """The one check of a request's size against the limits, wherever it enters.

        Context: the prompt's ``num_tokens``, plus ``max_new_tokens`` where the caller wants the
        whole completion to fit (OpenAI's API does). Sequences: ``num_seqs`` (n) seats out of
        ``max_num_seqs``, and for n > 1 the blocks its fork step holds: the prompt's plus a spare
        block per fork when the last one is partial.
        """
        wanted = num_tokens + (max_new_tokens or 0)
        if wanted > self.max_model_len:
            field = "prompt" if num_tokens > self.max_model_len else "max_tokens"
            raise RequestRejected(
                field, f"This model's maximum context length is {self.max_model_len} tokens (max_model_len). However, "
                f"you requested {wanted} tokens ({num_tokens} in the prompt, {max_new_tokens or 0} in the completion). "
                "Please reduce the length of the prompt or of max_tokens.", "context_length_exceeded")
        if num_seqs > self.max_num_seqs:
            raise RequestRejected("n", f"n={num_seqs} sequences are more than max_num_seqs={self.max_num_seqs}")
        spare = num_seqs - 1 if num_seqs > 1 and num_tokens % self.block_size else 0
        needed = cdiv(num_tokens, self.block_size) + spare
        if num_seqs > 1 and needed > self.num_blocks:
            raise RequestRejected("n", f"{num_seqs} sequences of a {num_tokens}-token prompt need {needed} KV blocks "
                                       f"at their fork, more than num_blocks={self.num_blocks}")
