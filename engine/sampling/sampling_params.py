"""Per-request sampling knobs, validated at construction (``ValueError`` names the field and its range).

The fields and their meaning follow vLLM's ``SamplingParams`` and the OpenAI API.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

MAX_LOGPROBS = 20  # as OpenAI's top_logprobs
STRUCTURED_OUTPUT_FIELDS = ("json", "json_object", "regex", "choice", "grammar")


class InvalidSamplingParam(ValueError):
    """A ``SamplingParams`` field out of its range; ``field`` names it for API error shapes."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class RequestOutputKind(enum.Enum):
    """What each output of a request holds (vLLM's names)."""

    CUMULATIVE = "cumulative"  # everything so far, at every step
    DELTA = "delta"  # only the text, token ids and logprobs new since the last output: streams
    FINAL_ONLY = "final_only"  # one output, when the request finishes: non-streaming calls


@dataclass(frozen=True)
class StructuredOutputsParams:
    """What the output must match (vLLM's names): exactly one of ``json`` (a JSON schema, as a dict or
    its text), ``json_object`` (any JSON object), ``regex``, ``choice`` (one of these strings) or
    ``grammar`` (a Lark grammar in llguidance's dialect, or GBNF as llama.cpp writes it). The output
    ends ("stop") when the grammar cannot continue. ``begin_after``: the grammar constrains only the text
    after this marker's first appearance in the output (a reasoning model's ``</think>``: its thinking
    stays free)."""

    json: str | dict[str, Any] | None = field(default=None, hash=False)
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | tuple[str, ...] | None = field(default=None, hash=False)
    grammar: str | None = None
    begin_after: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in STRUCTURED_OUTPUT_FIELDS if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise InvalidSamplingParam("structured_outputs",
                                       f"structured_outputs takes exactly one of {list(STRUCTURED_OUTPUT_FIELDS)}, got {given or 'none'}")
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise InvalidSamplingParam("structured_outputs", "structured_outputs.json must be a JSON schema (an object)")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidSamplingParam("structured_outputs", f"structured_outputs.{name} must be a non-empty string")
        if self.begin_after is not None and (not isinstance(self.begin_after, str) or not self.begin_after):
            raise InvalidSamplingParam("structured_outputs", "structured_outputs.begin_after must be a non-empty string")
        if not isinstance(self.json_object, bool):
            raise InvalidSamplingParam("structured_outputs", "structured_outputs.json_object must be true or false")
        if self.choice is not None and (not isinstance(self.choice, (list, tuple)) or not self.choice
                                        or not all(isinstance(c, str) and c for c in self.choice)):
            raise InvalidSamplingParam("structured_outputs",
                                       "structured_outputs.choice must be a list of non-empty strings")

    @property
    def kind(self) -> str:
        return next(name for name in STRUCTURED_OUTPUT_FIELDS if getattr(self, name) not in (None, False))


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop.

    ``temperature=0`` is greedy (penalties and logit_bias still apply). ``seed`` gives the
    request its own random generator, so its tokens are the same alone or in any batch.
    ``logprobs=k`` returns, per generated token, its log-probability and the top k
    alternatives; ``prompt_logprobs=k`` does the same for the prompt tokens.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 16
    min_tokens: int = 0
    stop: str | list[str] | tuple[str, ...] | None = None
    stop_token_ids: tuple[int, ...] | list[int] = ()
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = field(default=None, hash=False)
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    structured_outputs: StructuredOutputsParams | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        _check_int("n", self.n, 1, None)  # the engine bounds it by max_num_seqs
        _check_range("temperature", self.temperature, 0.0, None)
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise InvalidSamplingParam("top_p", f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or (self.top_k < 1 and self.top_k not in (-1, 0)):
            raise InvalidSamplingParam("top_k", f"top_k must be -1 or 0 (disabled) or an integer >= 1, got {self.top_k!r}")
        _check_range("min_p", self.min_p, 0.0, 1.0)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not -(2**63) <= self.seed < 2**63):
            raise InvalidSamplingParam("seed", f"seed must be a 64-bit integer or None, got {self.seed!r}")
        _check_int("max_tokens", self.max_tokens, 1, None)
        _check_int("min_tokens", self.min_tokens, 0, self.max_tokens)
        stops = self.stop_strings
        if any(not isinstance(s, str) or not s for s in stops):
            raise InvalidSamplingParam("stop", f"stop must be a non-empty string or a list of them, got {self.stop!r}")
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise InvalidSamplingParam(
                "stop_token_ids", f"stop_token_ids must be non-negative integers, got {list(self.stop_token_ids)}")
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if isinstance(self.repetition_penalty, bool) or not isinstance(self.repetition_penalty, (int, float)) \
                or not self.repetition_penalty > 0.0:
            raise InvalidSamplingParam("repetition_penalty", f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        for token, bias in (self.logit_bias or {}).items():
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise InvalidSamplingParam("logit_bias", f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
            _check_range("logit_bias", bias, -100.0, 100.0)
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise InvalidSamplingParam("structured_outputs", "structured_outputs must be a StructuredOutputsParams")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 0, MAX_LOGPROBS)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def uses_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0


def _check_int(name: str, value, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise InvalidSamplingParam(name, f"{name} must be an integer {bound}, got {value!r}")


def _check_range(name: str, value, low: float, high: float | None) -> None:
    """A finite number in range (an int too large for a float would fail in the sampler's tensors)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) or not value >= low \
            or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidSamplingParam(name, f"{name} must be a finite number {bound}, got {value!r}")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
