"""Scheduler requests -> ``RequestOutput``s: incremental text, finish reasons, timings."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from scheduler import Request

from .detokenizer import IncrementalDetokenizer
from .outputs import CompletionOutput, RequestMetrics, RequestOutput
from .sampling_params import SamplingParams


@dataclass(eq=False)
class RequestState:
    """What the engine keeps per request beside the scheduler's ``Request``."""

    request: Request
    prompt: str | None
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    metrics: RequestMetrics
    generator: torch.Generator | None

    def to_output(self) -> RequestOutput:
        request = self.request
        reason = request.finish_reason.value if request.finish_reason is not None else None
        completion = CompletionOutput(
            index=0,
            text=self.detokenizer.text,
            token_ids=list(request.output_token_ids),
            finish_reason=reason,
            stop_reason=request.stop_reason,
        )
        return RequestOutput(request.request_id, self.prompt, request.prompt_token_ids, [completion],
                             finished=request.is_finished, metrics=self.metrics)


class OutputProcessor:
    def __init__(self) -> None:
        self.states: dict[str, RequestState] = {}

    def add(self, state: RequestState) -> None:
        self.states[state.request.request_id] = state

    def process(self, sampled_request_ids: list[str]) -> list[RequestOutput]:
        """After ``Scheduler.update``: detokenize each new token and emit one output per request that moved."""
        now = time.monotonic()
        outputs = []
        for request_id in sampled_request_ids:
            state = self.states.get(request_id)
            if state is None:  # aborted during the step
                continue
            state.detokenizer.append(state.request.output_token_ids[-1])
            if state.metrics.first_token_time is None:
                state.metrics.first_token_time = now
            outputs.append(self._emit(state, now))
        return outputs

    def finish_aborted(self, request_id: str) -> RequestOutput | None:
        state = self.states.get(request_id)
        return None if state is None else self._emit(state, time.monotonic())

    def _emit(self, state: RequestState, now: float) -> RequestOutput:
        if state.request.is_finished:
            state.metrics.finished_time = now
            del self.states[state.request.request_id]
        return state.to_output()
