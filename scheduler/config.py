"""Scheduler budgets and pool size: frozen and validated at construction."""

from __future__ import annotations

from dataclasses import dataclass


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
