"""Sampled tokens -> ``RequestOutput``s: incremental text, stop strings, logprobs, timings.

What an output holds follows ``SamplingParams.output_kind``: everything so far (CUMULATIVE),
only what is new since the last output (DELTA: a step's work for a stream does not grow with
its length), or one output at the end (FINAL_ONLY). A request with n > 1 is a group of sequences: sequence 0 carries the request id, the forks
``<id>#1 .. <id>#n-1`` appear when the prompt is done (``Scheduler.update``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.model.forward_batch import SampledRows
from engine.sampling.grammar import CLOSING_MARGIN, JsonDepth
from engine.sampling.sampler import SamplerOutput, SamplingRow
from engine.sampling.sampling_params import RequestOutputKind, SamplingParams
from engine.scheduler import FinishReason, Request

from .detokenizer import IncrementalDetokenizer
from .outputs import CompletionOutput, Logprob, PositionLogprobs, RequestMetrics, RequestOutput
from .stop_strings import find_stop, undecided_tail
from .token_bytes import TokenBytes


def fork_id(request_id: str, index: int) -> str:
    return request_id if index == 0 else f"{request_id}#{index}"


@dataclass(eq=False)
class SequenceState:
    request: Request
    index: int
    detokenizer: IncrementalDetokenizer
    logprobs: list[PositionLogprobs] | None
    cumulative_logprob: float | None = None  # summed only when logprobs are asked for, as vLLM does
    stop_string: str | None = None  # the stop string that ended it, if any
    stop_at: int = 0  # where the text is cut when a stop string ended it
    matcher: Any = None  # structured outputs: the llguidance matcher of this sequence's grammar
    grammar_active: bool = True  # False until the structured output's begin_after marker has appeared
    json_depth: JsonDepth | None = None  # JSON outputs: what is open, to close it before max_tokens
    ended_by_grammar: bool = False  # its grammar cannot continue: finished, reason "stop"
    sent_chars: int = 0  # DELTA: text already in an output
    sent_tokens: int = 0  # DELTA: token ids (and logprobs) already in an output
    sent_final: bool = False  # DELTA: its finish reason went out

    @property
    def finished(self) -> bool:
        return self.request.is_finished or self.stop_string is not None or self.ended_by_grammar


@dataclass(eq=False)
class RequestState:
    """What the engine keeps per user request beside the scheduler's ``Request``s."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    generators: list[torch.Generator | None]  # one per sequence index
    matcher: Any = None  # structured outputs: sequence 0's matcher (forks copy their parent's)
    closers: torch.Tensor | None = None  # JSON outputs: the packed mask of tokens that close JSON
    sequences: list[SequenceState] = field(default_factory=list)
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    aborted: bool = False
    sent_prompt_logprobs: bool = False  # DELTA: they go out once, with the first output

    @property
    def finished(self) -> bool:
        done = all(seq.finished for seq in self.sequences)
        return done and (self.aborted or len(self.sequences) == self.params.n)

    def needs_prompt_logprobs(self) -> bool:
        return self.prompt_logprobs is not None and len(self.prompt_logprobs) < len(self.prompt_token_ids)


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_id: int | None) -> None:
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.token_bytes = TokenBytes(tokenizer)
        self.requests: dict[str, RequestState] = {}
        self.sequences: dict[str, tuple[RequestState, SequenceState]] = {}

    def add(self, state: RequestState, first: Request) -> None:
        if state.params.prompt_logprobs is not None:
            state.prompt_logprobs = [None]
        self.requests[state.request_id] = state
        constraint = state.params.structured_outputs
        self._add_sequence(state, first, 0, state.matcher, constraint is None or constraint.begin_after is None)

    def _add_sequence(self, state: RequestState, request: Request, index: int, matcher: Any = None,
                      grammar_active: bool = True) -> None:
        detokenizer = IncrementalDetokenizer(self.tokenizer, state.prompt_token_ids, state.params.skip_special_tokens)
        asked = state.params.logprobs is not None
        seq = SequenceState(request, index, detokenizer, [] if asked else None, 0.0 if asked else None, matcher=matcher,
                            grammar_active=grammar_active, json_depth=JsonDepth() if state.closers is not None else None)
        state.sequences.append(seq)
        self.sequences[request.request_id] = (state, seq)

    def prompt_logprob_ids(self) -> set[str]:
        return {s.request_id for s in self.requests.values() if s.needs_prompt_logprobs()}

    def sampling_rows(self, sampled: list[SampledRows]) -> list[SamplingRow]:
        """The sampler's rows for a step: one per sample, forks of a group drawing with their own generators."""
        rows = []
        for owner in sampled:
            state, seq = self.sequences[owner.request_id]
            for offset in range(len(owner.rows)):
                outputs = seq.request.output_token_ids if offset == 0 else []  # a fork has no output yet
                # forks draw their first token in the parent's grammar state, not yet advanced
                matcher = seq.matcher if seq.grammar_active else None
                rows.append(SamplingRow(state.params, state.generators[seq.index + offset], state.prompt_token_ids,
                                        outputs, self.eos_token_id, matcher, self._closing(state, seq, matcher)))
        return rows

    @staticmethod
    def _closing(state: RequestState, seq: SequenceState, matcher: Any) -> torch.Tensor | None:
        """The closers' mask when a JSON output must now close what it has open to end within max_tokens."""
        if matcher is None or seq.json_depth is None:
            return None
        remaining = state.params.max_tokens - len(seq.request.output_token_ids)
        return state.closers if remaining <= seq.json_depth.num_open + CLOSING_MARGIN else None

    def add_forks(self, forked: list[Request]) -> None:
        for child in forked:
            state, parent = self.sequences[child.parent_id]
            matcher = None if parent.matcher is None else parent.matcher.deep_copy()  # before the parent advances
            self._add_sequence(state, child, len(state.sequences), matcher, parent.grammar_active)

    def record_prompt_logprobs(self, prompt_logits: dict[str, torch.Tensor], start_positions: dict[str, int]) -> None:
        """Logits at positions p predict prompt token p + 1; positions past the prompt are ignored."""
        for seq_id, logits in prompt_logits.items():
            state, _ = self.sequences[seq_id]
            start = start_positions[seq_id]
            known = len(state.prompt_logprobs)
            targets = state.prompt_token_ids[start + 1 : start + 1 + logits.shape[0]]
            if start + 1 != known or not targets:  # recomputed after preemption: already recorded
                continue
            logprobs = torch.log_softmax(logits[: len(targets)], dim=-1)
            target_ids = torch.tensor(targets, device=logits.device)
            chosen = logprobs.gather(1, target_ids[:, None])
            ranks = (logprobs > chosen).sum(dim=-1) + 1
            top = logprobs.topk(state.params.prompt_logprobs, dim=-1) if state.params.prompt_logprobs else None
            for row, token in enumerate(targets):
                state.prompt_logprobs.append(self._position(
                    token, float(chosen[row]), int(ranks[row]),
                    None if top is None else top.indices[row], None if top is None else top.values[row],
                ))

    def process(self, sampled: list[SampledRows],
                tokens: SamplerOutput) -> tuple[list[RequestOutput], list[tuple[str, str | None]]]:
        """After ``Scheduler.update``: text, stop strings, grammars and logprobs for each sampled sequence.

        Returns the outputs of the requests that moved, and (sequence id, stop string) pairs the
        engine must finish in the scheduler (None: its grammar ended it).
        """
        now = time.monotonic()
        moved: dict[str, RequestState] = {}
        stopped: list[tuple[str, str]] = []
        for owner in sampled:
            state, first = self.sequences[owner.request_id]
            # A fork step samples for the whole group: the prompt's sequence and its new forks.
            group = state.sequences[first.index : first.index + len(owner.rows)]
            for seq, row in zip(group, owner.rows, strict=True):
                if self._append(state, seq, tokens, row):
                    stopped.append((seq.request.request_id, seq.stop_string))
            if state.metrics.first_token_time is None:
                state.metrics.first_token_time = now
            moved[state.request_id] = state
        outputs = [output for state in moved.values() if (output := self._emit(state, now)) is not None]
        return outputs, stopped

    def _append(self, state: RequestState, seq: SequenceState, tokens: SamplerOutput, row: int) -> bool:
        """Record one token of ``seq``; True if a stop string or its grammar ended it."""
        token_id = seq.request.output_token_ids[-1]
        state.metrics.num_generated_tokens += 1
        if seq.logprobs is not None:
            logprob = tokens.logprobs[row]
            seq.cumulative_logprob += logprob
            k = state.params.logprobs
            seq.logprobs.append(self._position(
                token_id, logprob, tokens.ranks[row],
                tokens.top_ids[row, :k] if k else None, tokens.top_logprobs[row, :k] if k else None,
            ))
        before = len(seq.detokenizer.text)
        seq.detokenizer.append(token_id)
        if seq.matcher is not None and not seq.request.is_finished:
            if seq.grammar_active:
                seq.matcher.consume_token(token_id)
                if seq.json_depth is not None:
                    seq.json_depth.feed(seq.detokenizer.text[before:])
                if seq.matcher.is_stopped():  # nothing but the end can follow (or the grammar broke)
                    seq.ended_by_grammar = True
                    return True
            else:  # the grammar starts with the token after its marker
                marker = state.params.structured_outputs.begin_after
                seq.grammar_active = seq.detokenizer.text.find(marker, max(0, before - len(marker) + 1)) >= 0
        stops = state.params.stop_strings
        if stops and seq.stop_string is None and (match := find_stop(seq.detokenizer.text, stops, before)):
            seq.stop_at, seq.stop_string = match
            if state.params.include_stop_str_in_output:
                seq.stop_at += len(seq.stop_string)
            return True
        return False

    def _position(self, token_id: int, logprob: float, rank: int, top_ids, top_values) -> PositionLogprobs:
        entry = {token_id: Logprob(logprob, rank, self.token_bytes.text(token_id), self.token_bytes.bytes(token_id))}
        if top_ids is not None:
            for position, (tid, value) in enumerate(zip(top_ids.tolist(), top_values.tolist())):
                entry.setdefault(tid, Logprob(value, position + 1, self.token_bytes.text(tid), self.token_bytes.bytes(tid)))
        return entry

    def abort(self, request_id: str) -> RequestOutput | None:
        state = self.requests.get(request_id)
        if state is None:
            return None
        state.aborted = True
        return self._emit(state, time.monotonic())

    def _emit(self, state: RequestState, now: float) -> RequestOutput | None:
        """The request's output for this step in its params' kind; None where that kind sends nothing now."""
        finished = state.finished
        kind = state.params.output_kind
        if kind is RequestOutputKind.FINAL_ONLY and not finished:
            return None
        if finished:
            state.metrics.finished_time = now
            del self.requests[state.request_id]
            for seq in state.sequences:
                del self.sequences[seq.request.request_id]
        prompt_logprobs = state.prompt_logprobs
        if kind is RequestOutputKind.DELTA:
            completions = [c for seq in state.sequences if (c := self._delta(state, seq)) is not None]
            if state.sent_prompt_logprobs:
                prompt_logprobs = None
            state.sent_prompt_logprobs = True
        else:
            completions = [self._completion(state, seq) for seq in state.sequences]
        return RequestOutput(state.request_id, state.prompt, state.prompt_token_ids, completions, finished,
                             state.metrics, prompt_logprobs, state.sequences[0].request.num_cached_tokens or 0)

    def _delta(self, state: RequestState, seq: SequenceState) -> CompletionOutput | None:
        """What is new in ``seq`` since its last output; None if nothing is."""
        completion = self._completion(state, seq, seq.sent_tokens, seq.sent_chars)
        if not completion.text and not completion.token_ids and (seq.sent_final or not completion.finished):
            return None
        seq.sent_chars += len(completion.text)
        seq.sent_tokens += len(completion.token_ids)
        seq.sent_final = completion.finished
        return completion

    def _completion(self, state: RequestState, seq: SequenceState, first_token: int = 0,
                    first_char: int = 0) -> CompletionOutput:
        """``seq`` from token ``first_token`` and character ``first_char`` on (text held back while it could
        still become a stop string is left out until decided)."""
        text = seq.detokenizer.text
        if seq.stop_string is not None:
            end = seq.stop_at
            reason, stop_reason = FinishReason.STOP.value, seq.stop_string
        elif seq.request.is_finished:
            end = len(text)
            reason, stop_reason = seq.request.finish_reason.value, seq.request.stop_reason
        elif seq.ended_by_grammar:
            end = len(text)
            reason, stop_reason = FinishReason.STOP.value, None
        else:
            end = len(text) - undecided_tail(text, state.params.stop_strings)
            reason, stop_reason = None, None
        return CompletionOutput(
            index=seq.index, text=text[first_char:max(end, first_char)],
            token_ids=seq.request.output_token_ids[first_token:], cumulative_logprob=seq.cumulative_logprob,
            logprobs=None if seq.logprobs is None else seq.logprobs[first_token:],
            finish_reason=reason, stop_reason=stop_reason,
        )
