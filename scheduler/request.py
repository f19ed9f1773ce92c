"""A request's lifecycle state: tokens, progress and status; nothing about tensors."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    """Why a request ended; the values are the ones users see (OpenAI's finish_reason)."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True)
class StopConditions:
    """The stop rules the scheduler can check on token ids alone (stop strings live in the engine)."""

    max_tokens: int
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    eos_token_id: int | None = None
    ignore_eos: bool = False


@dataclass(eq=False)
class Request:
    """One sequence being generated.

    ``num_computed_tokens`` counts the tokens whose K/V sit in the cache; each step the
    scheduler lets it catch up with ``num_tokens`` (prompt plus generated). Only
    ``Scheduler`` writes these fields.
    """

    request_id: str
    prompt_token_ids: list[int]
    stop: StopConditions
    arrival_time: float = 0.0
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    num_preemptions: int = 0
    num_cached_tokens: int | None = None  # prompt tokens found in the prefix cache at first admission
    # Compute every token even if cached: prompt log-probabilities need the logits of each position.
    skip_prefix_cache: bool = False
    # n > 1: ids of the sequences this one forks into when its prompt is done. They share the
    # prompt's KV blocks and each draws its own first token from the same logits.
    fork_ids: list[str] = field(default_factory=list)
    parent_id: str | None = None  # a fork: the sequence whose prompt it shares

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def token_ids_from(self, start: int, count: int) -> list[int]:
        """Tokens ``start .. start + count`` of prompt + output, without building the joined list."""
        num_prompt = len(self.prompt_token_ids)
        if start + count <= num_prompt:
            return self.prompt_token_ids[start : start + count]
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt : start - num_prompt + count]
        return self.prompt_token_ids[start:] + self.output_token_ids[: start + count - num_prompt]

    @property
    def num_seats(self) -> int:
        """Running sequences this request will occupy (itself and its forks)."""
        return 1 + len(self.fork_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
