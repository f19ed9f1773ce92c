"""What users get back from ``LLM.generate`` and ``AsyncLLMEngine.generate``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestMetrics:
    """Wall-clock times (``time.monotonic()``) of a request's milestones, and its token count so far."""

    arrival_time: float
    first_token_time: float | None = None
    finished_time: float | None = None
    num_generated_tokens: int = 0  # over all sequences, whatever the outputs carried


@dataclass(frozen=True)
class Logprob:
    """One candidate token at one position: OpenAI's ``token``, ``logprob`` and ``bytes``, plus its rank."""

    logprob: float
    rank: int  # 1 = the most likely token at this position
    decoded_token: str
    token_bytes: bytes


# Per position: token id -> Logprob, holding the chosen (or prompt) token and the top alternatives.
PositionLogprobs = dict[int, Logprob]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[PositionLogprobs] | None = None
    finish_reason: str | None = None  # "stop", "length" or "abort" once finished
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(0.0))
    # With SamplingParams.prompt_logprobs: None for the first prompt token, then one entry per token.
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    num_cached_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache
