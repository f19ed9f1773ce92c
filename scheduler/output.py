"""The step contract the scheduler hands to the engine."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScheduledRequest:
    """One request's share of a step: feed ``token_ids`` at positions ``start_pos ..``.

    ``num_samples`` tokens are drawn from the last position's logits once these tokens reach
    the end of the request's known tokens: 1, or n for a prompt that forks into n sequences;
    0 for a prompt chunk that is not the last.
    """

    request_id: str
    token_ids: list[int]
    start_pos: int
    block_tables: tuple[list[int], ...]  # one per KV cache group (scheduler/kv_groups.py)
    num_samples: int

    @property
    def sample(self) -> bool:
        return self.num_samples > 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def seq_len(self) -> int:
        """Tokens in the cache once this step has run: the context the last query attends to."""
        return self.start_pos + len(self.token_ids)


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted_ids: list[str] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class StepUpdate:
    """What ``Scheduler.update`` did with a step's sampled tokens.

    ``block_copies`` are (source, destination) block ids whose K/V the engine must copy
    before the next step: a forked sequence's private copy of the prompt's last partial block.
    """

    finished: list = field(default_factory=list)  # list[Request]
    forked: list = field(default_factory=list)  # list[Request], the new sequences
    block_copies: list[tuple[int, int]] = field(default_factory=list)
