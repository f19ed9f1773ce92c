"""Continuous batching: which requests run in a step, with how many tokens, on which blocks.

The one rule ("computed catches up"): every request has ``num_tokens`` (prompt plus output)
and ``num_computed_tokens`` (already in the KV cache). A step gives each scheduled request
``min(num_tokens - num_computed_tokens, budget left)`` tokens. A decode is the case of one
token, a prompt is many, and a prompt larger than the budget is prefilled in chunks. No
phase flags.

Order of one ``schedule()``:
1. Running requests, oldest first. When the pool has no block for one, the newest running
   request is preempted (blocks freed, back to the head of the waiting queue, recomputed
   later with the tokens it generated kept), possibly the request itself.
2. Waiting requests, first come first served, while ``max_num_seqs``, the token budget and
   free blocks allow, and only if nothing was preempted this step.

Before a request's tables grow, its sliding-window KV cache groups give back the blocks that no
token from ``num_computed_tokens`` on can see (``BlockManager.free_outside_window``), so a long
sequence of a Gemma 3 or Mistral model holds its whole context only in its full-attention layers.

A request asking for n > 1 sequences is prefilled once; at the step that samples its first
token it forks (``update``): full prompt blocks are shared by reference count, the partial
last block is copied, and each sequence continues as its own request. It is admitted only
with seats for all n sequences, and its sampling step only with a spare block per fork.
"""

from __future__ import annotations

from collections import deque

from .block_manager import BlockManager
from .config import SchedulerConfig
from .output import ScheduledRequest, SchedulerOutput, StepUpdate
from .request import FinishReason, Request, RequestStatus


class Scheduler:
    """The single writer of request progress (``num_computed_tokens``, outputs, status)."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching,
                                          config.kv_group_windows)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        self.prefix_cache_queries = 0  # tokens (prompt, and output after a preemption) looked up at admission
        self.prefix_cache_hits = 0  # of those, tokens found in the cache
        self._num_spare_reserved = 0

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def add(self, request: Request) -> None:
        ids = (request.request_id, *request.fork_ids)
        if len(set(ids)) != len(ids):
            raise ValueError(f"request {request.request_id!r} names a sequence id twice: {list(ids)}")
        # The fork ids of live requests are taken too: their sequences appear at the fork step.
        pending = {fork_id for live in self.requests.values() for fork_id in live.fork_ids}
        taken = [rid for rid in ids if rid in self.requests or rid in pending]
        if taken:
            raise ValueError(f"request_id {taken[0]!r} is already in use")
        self.config.check_request(request.num_tokens, request.num_seats)
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted: list[str] = []
        # Spare blocks promised to this step's forks: later allocations must leave them free.
        self._num_spare_reserved = 0

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self._allocate(request, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    break
            else:
                scheduled.append(self._scheduled(request, num_new))
                budget -= num_new
                index += 1

        seats_taken = sum(r.num_seats for r in self.running)
        while self.waiting and not preempted and budget > 0:
            request = self.waiting[0]
            if seats_taken + request.num_seats > self.config.max_num_seqs:
                break
            cached = 0
            looks_up = not request.skip_prefix_cache  # the block manager finds nothing with caching off
            if looks_up and request.num_computed_tokens == 0:
                cached = self.block_manager.take_cached_prefix(
                    request.request_id, request.num_tokens, request.token_ids_from)
                request.num_computed_tokens = cached
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self._allocate(request, num_new):
                if cached:  # give the cached blocks back (they stay cached) and try again later
                    self.block_manager.free(request.request_id)
                    request.num_computed_tokens = 0
                break
            if request.num_cached_tokens is None:
                request.num_cached_tokens = cached
            if looks_up and self.config.enable_prefix_caching:
                self.prefix_cache_queries += request.num_tokens
                self.prefix_cache_hits += cached
            seats_taken += request.num_seats
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            scheduled.append(self._scheduled(request, num_new))
            budget -= num_new

        return SchedulerOutput(scheduled=scheduled, preempted_ids=preempted)

    def update(self, output: SchedulerOutput, sampled_token_ids: dict[str, list[int]]) -> StepUpdate:
        """Advance the step's requests, append sampled tokens (forking where n > 1), finish those that stop.

        ``sampled_token_ids[request_id]`` holds ``num_samples`` tokens for each sampling request.
        """
        result = StepUpdate()
        for item in output.scheduled:
            request = self.requests.get(item.request_id)
            if request is None:  # aborted while the step ran
                continue
            request.num_computed_tokens += item.num_tokens
            self.block_manager.cache_full_blocks(request.request_id, request.num_computed_tokens,
                                                 request.token_ids_from)
            if not item.sample:
                continue
            first, *rest = sampled_token_ids[item.request_id]
            sequences = [request]
            if request.fork_ids:
                sequences += self._fork(request, rest, result)
            request.output_token_ids.append(first)
            for sequence in sequences:
                reason, stop_reason = self._stop_reason(sequence, sequence.output_token_ids[-1])
                if reason is not None:
                    self._finish(sequence, reason, stop_reason)
                    result.finished.append(sequence)
        return result

    def finish(self, request_id: str, reason: FinishReason, stop_reason: int | str | None = None) -> Request | None:
        """End a request from outside the step (a stop string, an abort). Unknown ids are ignored."""
        request = self.requests.get(request_id)
        if request is not None:
            self._finish(request, reason, stop_reason)
        return request

    def abort(self, request_id: str) -> Request | None:
        return self.finish(request_id, FinishReason.ABORT)

    def _allocate(self, request: Request, num_new: int) -> bool:
        seq_len = request.num_computed_tokens + num_new
        forks_now = request.fork_ids and seq_len == request.num_tokens
        spare = len(request.fork_ids) * self.block_manager.num_groups if forks_now and seq_len % self.config.block_size else 0
        reserved = self._num_spare_reserved
        self.block_manager.free_outside_window(request.request_id, request.num_computed_tokens)
        if not self.block_manager.allocate_slots(request.request_id, seq_len, num_spare_blocks=spare + reserved):
            return False
        self._num_spare_reserved += spare
        return True

    def _scheduled(self, request: Request, num_new: int) -> ScheduledRequest:
        start = request.num_computed_tokens
        return ScheduledRequest(
            request_id=request.request_id,
            token_ids=request.token_ids_from(start, num_new),
            start_pos=start,
            block_tables=self.block_manager.block_tables(request.request_id),
            num_samples=request.num_seats if start + num_new == request.num_tokens else 0,
        )

    def _fork(self, parent: Request, first_tokens: list[int], result: StepUpdate) -> list[Request]:
        children = []
        for child_id, token_id in zip(parent.fork_ids, first_tokens, strict=True):
            child = Request(
                child_id, parent.prompt_token_ids, parent.stop, arrival_time=parent.arrival_time,
                output_token_ids=[*parent.output_token_ids, token_id],
                num_computed_tokens=parent.num_computed_tokens, status=RequestStatus.RUNNING,
                parent_id=parent.request_id,
            )
            result.block_copies += self.block_manager.fork(parent.request_id, child_id, parent.num_computed_tokens)
            self.requests[child_id] = child
            self.running.append(child)
            children.append(child)
        parent.fork_ids = []
        result.forked.extend(children)
        return children

    def _preempt(self, request: Request) -> None:
        self.block_manager.free(request.request_id)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _stop_reason(self, request: Request, token_id: int) -> tuple[FinishReason | None, int | None]:
        stop = request.stop
        if request.num_output_tokens >= stop.min_tokens:
            if token_id == stop.eos_token_id and not stop.ignore_eos:
                return FinishReason.STOP, None
            if token_id in stop.stop_token_ids:
                return FinishReason.STOP, token_id
        if request.num_output_tokens >= stop.max_tokens or request.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH, None
        return None, None

    def _finish(self, request: Request, reason: FinishReason, stop_reason: int | str | None) -> None:
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.block_manager.free(request.request_id)
        del self.requests[request.request_id]
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        request.stop_reason = stop_reason
