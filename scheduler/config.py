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
    kv_group_windows: tuple[int, ...] = (0,)  # per KV cache group: its sliding window (0: full attention)

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "num_blocks", "max_model_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        needed = self.blocks_for(self.max_model_len)
        if self.num_blocks < needed:
            raise ValueError(
                f"the KV cache has num_blocks={self.num_blocks} blocks of block_size={self.block_size} tokens, "
                f"fewer than the {needed} that one request of max_model_len={self.max_model_len} tokens holds"
                + (f" over {len(self.kv_group_windows)} groups of layers" if len(self.kv_group_windows) > 1 else "")
                + ": it could never fit. Give the cache more memory or lower max_model_len."
            )

    def blocks_for(self, num_tokens: int) -> int:
        """The most blocks a sequence of ``num_tokens`` tokens holds at once: all its blocks in each
        full-attention group; in a sliding-window group, no more than a step's queries and their windows span."""
        whole = cdiv(num_tokens, self.block_size)
        return sum(min(whole, cdiv(window - 1 + self.max_num_batched_tokens, self.block_size) + 1) if window else whole
                   for window in self.kv_group_windows)

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
        needed = self.blocks_for(num_tokens) + spare * len(self.kv_group_windows)
        if num_seqs > 1 and needed > self.num_blocks:
            raise RequestRejected("n", f"{num_seqs} sequences of a {num_tokens}-token prompt need {needed} KV blocks "
                                       f"at their fork, more than num_blocks={self.num_blocks}")
