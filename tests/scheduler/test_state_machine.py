"""Stateful property test of the scheduler: random adds (some forking into n > 1 sequences),
steps, external finishes and aborts over a small KV pool, with the block-accounting, budget,
preemption, fork and liveness invariants checked after every rule and a full drain at the end
of every run."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from scheduler import (
    FinishReason,
    Request,
    RequestStatus,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    StopConditions,
)

VOCAB = list(range(8))
MAX_DRAIN_STEPS = 10_000


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@st.composite
def configs(draw) -> SchedulerConfig:
    max_model_len = draw(st.integers(32, 64))
    block_size = draw(st.sampled_from([1, 2, 4, 8]))
    min_blocks = cdiv(max_model_len, block_size)
    # Mostly tight pools (a single request may fill it), so that preemption happens often.
    num_blocks = min_blocks + draw(st.integers(0, min_blocks))
    return SchedulerConfig(
        max_num_seqs=draw(st.integers(1, 6)),
        max_num_batched_tokens=draw(st.integers(4, 64)),
        block_size=block_size,
        num_blocks=num_blocks,
        max_model_len=max_model_len,
    )


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(config=configs())
    def setup(self, config: SchedulerConfig) -> None:
        self.config = config
        self.scheduler = Scheduler(config)
        self.next_id = 0
        self.all_requests: dict[str, Request] = {}  # every request ever added, live or finished
        self.finished_ids: set[str] = set()
        # Fork model: live requests that have not forked yet -> their fork ids; every
        # sequence -> the request it came from (itself for a request that was added); and each
        # block shared at a fork -> the family (parent and children) allowed to hold it together.
        self.pending_forks: dict[str, list[str]] = {}
        self.parent_of: dict[str, str] = {}
        self.shared_holders: dict[int, frozenset[str]] = {}

    # ------------------------------------------------------------------ helpers

    @property
    def live_ids(self) -> list[str]:
        return sorted(self.scheduler.requests)

    def _mark_finished(self, request: Request, reason: FinishReason | None = None) -> None:
        assert request.status is RequestStatus.FINISHED
        assert request.request_id not in self.scheduler.requests
        if reason is not None:
            assert request.finish_reason is reason
        self.finished_ids.add(request.request_id)
        # A parent that ends before its sampling step never forks.
        self.pending_forks.pop(request.request_id, None)

    def _exclusive_blocks(self, rid: str) -> int:
        """Blocks that freeing ``rid`` gives back to the pool: those no other sequence shares."""
        bm = self.scheduler.block_manager
        return sum(bm.pool.blocks[block_id].ref_count == 1 for block_id in bm.block_table(rid))

    def _may_share(self, block_id: int, holders: list[str]) -> bool:
        """Several tables may hold a block only if it is a full prompt block shared at a fork
        and they all belong to that fork's family."""
        family = self.shared_holders.get(block_id)
        return family is not None and set(holders) <= family

    def _check_step_output(self, out: SchedulerOutput, before: dict[str, tuple[int, int]]) -> None:
        """Checks on one schedule() result; ``before`` maps live ids to (num_computed, num_tokens)."""
        cfg = self.config
        ids = [s.request_id for s in out.scheduled]
        assert len(ids) == len(set(ids)), f"request scheduled twice in one step: {ids}"
        assert len(ids) <= cfg.max_num_seqs
        assert out.num_batched_tokens <= cfg.max_num_batched_tokens
        assert not set(ids) & set(out.preempted_ids), "a request was both scheduled and preempted"
        assert len(out.preempted_ids) == len(set(out.preempted_ids))

        for item in out.scheduled:
            request = self.scheduler.requests[item.request_id]
            computed, num_tokens = before[item.request_id]
            assert request.status is RequestStatus.RUNNING
            assert item.num_tokens >= 1
            # Continues where the cache stops (0 for a request preempted in an earlier step).
            assert item.start_pos == computed == request.num_computed_tokens
            assert item.seq_len <= num_tokens
            assert item.sample == (item.seq_len == request.num_tokens)
            full = request.prompt_token_ids + request.output_token_ids
            assert item.token_ids == full[item.start_pos : item.seq_len]
            assert len(item.block_table) * cfg.block_size >= item.seq_len, (
                f"{item.request_id}: table {item.block_table} does not cover {item.seq_len} tokens"
            )
            assert item.block_table == self.scheduler.block_manager.block_table(item.request_id)

        # Block tables of the requests running in this step are disjoint, except for the full
        # prompt blocks a fork family shares.
        seen: dict[int, list[str]] = {}
        for item in out.scheduled:
            for block_id in item.block_table:
                seen.setdefault(block_id, []).append(item.request_id)
        for block_id, holders in seen.items():
            if len(holders) > 1:
                assert self._may_share(block_id, holders), f"block {block_id} in {holders}"

        # n > 1: the step that finishes the prompt samples once per sequence; any other samples once.
        for item in out.scheduled:
            request = self.scheduler.requests[item.request_id]
            assert request.fork_ids == self.pending_forks.get(item.request_id, [])
            if item.sample:
                assert item.num_samples == 1 + len(request.fork_ids)
                if request.fork_ids:
                    assert request.output_token_ids == [], "a request forks at its first sampled token"
            else:
                assert item.num_samples == 0
        # The spare blocks promised to this step's forks are still free when update() runs.
        copies_due = sum(
            len(self.pending_forks[s.request_id])
            for s in out.scheduled
            if s.sample and s.request_id in self.pending_forks and s.seq_len % cfg.block_size
        )
        assert self.scheduler.block_manager.num_free_blocks >= copies_due, (
            f"{copies_due} fork copies due but {self.scheduler.block_manager.num_free_blocks} free blocks"
        )

        for rid in out.preempted_ids:
            request = self.scheduler.requests[rid]
            assert request.status is RequestStatus.PREEMPTED
            assert request.num_computed_tokens == 0
            assert request in self.scheduler.waiting
            assert self.scheduler.block_manager.block_table(rid) == []
        if out.preempted_ids:
            # The preempted go back to the head of the waiting queue, and nothing new is admitted.
            # Victims go newest first, so the head keeps their original (arrival) order.
            head = [r.request_id for r in list(self.scheduler.waiting)[: len(out.preempted_ids)]]
            assert head == out.preempted_ids[::-1]
            assert set(out.preempted_ids) <= self._running_before
            assert self._admitted_this_step(out) == set(), "admitted a waiting request in a step that preempted"

    def _admitted_this_step(self, out: SchedulerOutput) -> set[str]:
        return {s.request_id for s in out.scheduled} - self._running_before

    def _expected_stop(self, request: Request, token: int) -> tuple[FinishReason | None, int | None]:
        stop = request.stop
        n_out = request.num_output_tokens
        if n_out >= stop.min_tokens:
            if stop.eos_token_id is not None and token == stop.eos_token_id and not stop.ignore_eos:
                return FinishReason.STOP, None
            if token in stop.stop_token_ids:
                return FinishReason.STOP, token
        if n_out >= stop.max_tokens or request.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH, None
        return None, None

    def _step(self, pick_tokens, abort_in_flight=None) -> None:
        sched = self.scheduler
        had_work = sched.has_unfinished()
        before = {rid: (r.num_computed_tokens, r.num_tokens) for rid, r in sched.requests.items()}
        outputs_before = {rid: list(r.output_token_ids) for rid, r in sched.requests.items()}
        self._running_before = {r.request_id for r in sched.running}

        out = sched.schedule()
        if had_work:
            assert out.scheduled, "unfinished work but nothing scheduled: the engine would hang"
        else:
            assert out.is_empty and not out.preempted_ids
        self._check_step_output(out, before)
        if out.preempted_ids:
            event("step preempted a request")
        if any(not s.sample for s in out.scheduled):
            event("step had a non-final prefill chunk")
        if len(out.scheduled) > 1:
            event("step batched several requests")
        if any(s.num_samples > 1 for s in out.scheduled):
            event("step forked a request")
        if any(self.parent_of.get(rid, rid) != rid for rid in out.preempted_ids):
            event("step preempted a forked child")
        sched.block_manager.check_invariants()

        sampled = {s.request_id: [pick_tokens() for _ in range(s.num_samples)] for s in out.scheduled if s.sample}

        aborted: set[str] = set()
        if abort_in_flight is not None and out.scheduled:
            rid, reason = abort_in_flight(out)
            used = sched.block_manager.num_used_blocks
            held = self._exclusive_blocks(rid)
            request = sched.finish(rid, reason, "stop-string" if reason is FinishReason.STOP else None)
            assert request is not None
            assert sched.block_manager.num_used_blocks == used - held  # freed at once
            self._mark_finished(request, reason)
            aborted.add(rid)

        # Expected per-request effect of update(), computed before it runs.
        expected = {}
        for item in out.scheduled:
            if item.request_id in aborted:
                continue
            request = sched.requests[item.request_id]
            expected[item.request_id] = (request.num_computed_tokens + item.num_tokens, request.num_output_tokens)

        # The forks due in this update, in step order: sampling parents that were not finished in flight.
        forking = [
            (item, list(sched.requests[item.request_id].fork_ids))
            for item in out.scheduled
            if item.sample and item.request_id not in aborted and sched.requests[item.request_id].fork_ids
        ]

        update = sched.update(out, sampled)
        finished = update.finished
        finished_ids = {r.request_id for r in finished}
        self._check_forks(forking, update, sampled, outputs_before, finished_ids)
        assert not finished_ids & aborted
        for item in out.scheduled:
            rid = item.request_id
            request = self.all_requests[rid]
            if rid in aborted:
                assert request.finish_reason is not None and request.status is RequestStatus.FINISHED
                continue
            computed, n_out = expected[rid]
            if rid not in finished_ids:
                assert request.num_computed_tokens == computed
            if item.sample:
                assert len(sampled[rid]) == item.num_samples
                assert request.num_output_tokens == n_out + 1
                assert request.output_token_ids[-1] == sampled[rid][0]
                # Oracle for the stop rules, evaluated on the state right after the append.
                reason, stop_reason = self._expected_stop(request, sampled[rid][0])
                if reason is None:
                    assert rid not in finished_ids and request.status is RequestStatus.RUNNING
                else:
                    assert rid in finished_ids, f"{rid} should have finished with {reason}"
                    assert (request.finish_reason, request.stop_reason) == (reason, stop_reason)
            else:
                assert request.num_output_tokens == n_out
                assert rid not in finished_ids
        for request in finished:
            self._mark_finished(request)

        # Generated tokens survive preemption (and everything else): old outputs are a prefix.
        # (Children are new: they are not in outputs_before.)
        for rid, old in outputs_before.items():
            new = self.all_requests[rid].output_token_ids
            assert new[: len(old)] == old, f"{rid} lost generated tokens: {old} -> {new}"

    def _check_forks(self, forking, update, sampled, outputs_before, finished_ids) -> None:
        """Checks on the forks of one update(): children, their tokens, tables and block copies."""
        sched = self.scheduler
        bm = sched.block_manager
        bs = self.config.block_size
        expected_forked = [child_id for _, fork_ids in forking for child_id in fork_ids]
        assert [c.request_id for c in update.forked] == expected_forked, "forked children differ from the fork ids"
        for child in update.forked:
            assert child.request_id not in self.all_requests, f"{child.request_id} existed before its fork"

        copies = list(update.block_copies)
        expected_copies = sum(len(fork_ids) for item, fork_ids in forking if item.seq_len % bs)
        assert len(copies) == expected_copies, f"{len(copies)} block copies, expected {expected_copies}"
        dsts = [dst for _, dst in copies]
        # The engine copies all pairs at once: destinations distinct and never a source.
        assert len(set(dsts)) == len(dsts), f"two copies into one block: {copies}"
        assert not set(dsts) & {src for src, _ in copies}, f"a copy writes a block another reads: {copies}"

        children_by_id = {c.request_id: c for c in update.forked}
        tables = {rid: bm.block_table(rid) for rid in bm.holders()}
        copy_iter = iter(copies)
        for item, fork_ids in forking:
            parent_id = item.request_id
            parent = self.all_requests[parent_id]
            num_full = item.seq_len // bs
            partial = item.seq_len % bs != 0
            assert parent.fork_ids == [], "a parent forks once"
            self.pending_forks.pop(parent_id, None)
            if parent_id not in finished_ids:
                assert bm.block_table(parent_id) == item.block_table, "forking changed the parent's table"
            family = frozenset([parent_id, *fork_ids])
            for block_id in item.block_table[:num_full]:
                self.shared_holders[block_id] = family
            for index, child_id in enumerate(fork_ids, start=1):
                child = children_by_id[child_id]
                self.all_requests[child_id] = child
                self.parent_of[child_id] = parent_id
                assert child.prompt_token_ids == parent.prompt_token_ids
                assert child.stop == parent.stop and child.fork_ids == []
                assert child.output_token_ids == outputs_before[parent_id] + [sampled[parent_id][index]]
                assert child.num_computed_tokens == parent.num_computed_tokens == item.seq_len
                reason, stop_reason = self._expected_stop(child, sampled[parent_id][index])
                if reason is None:
                    assert child_id not in finished_ids and child.status is RequestStatus.RUNNING
                    assert sched.requests[child_id] is child and child in sched.running
                else:
                    assert child_id in finished_ids, f"{child_id} should have finished with {reason}"
                    assert (child.finish_reason, child.stop_reason) == (reason, stop_reason)
                    assert child_id not in tables
                if partial:
                    src, dst = next(copy_iter)
                    assert src == item.block_table[num_full], "the copy's source is not the parent's partial block"
                    assert dst not in item.block_table
                    holders = [rid for rid, table in tables.items() if dst in table]
                    if child_id in finished_ids:
                        assert holders == []
                    else:
                        assert holders == [child_id], f"copy destination {dst} held by {holders}"
                        assert tables[child_id] == item.block_table[:num_full] + [dst]
                    event("fork copied a partial block")
                elif child_id not in finished_ids:
                    assert tables[child_id] == item.block_table[:num_full]
                    event("fork of a block-aligned prompt")

    # ------------------------------------------------------------------ rules

    @rule(
        prompt_frac=st.floats(0.0, 1.0),
        max_tokens=st.integers(1, 20),
        min_tokens=st.integers(0, 5),
        eos=st.one_of(st.none(), st.sampled_from(VOCAB)),
        stop_ids=st.lists(st.sampled_from(VOCAB), max_size=2, unique=True),
        ignore_eos=st.booleans(),
        num_forks=st.sampled_from([0, 0, 0, 0, 1, 2]),
        data=st.data(),
    )
    def add(self, prompt_frac, max_tokens, min_tokens, eos, stop_ids, ignore_eos, num_forks, data) -> None:
        cfg = self.config
        prompt_len = 1 + int(prompt_frac * (cfg.max_model_len - 2))
        prompt = data.draw(st.lists(st.sampled_from(VOCAB), min_size=prompt_len, max_size=prompt_len))
        rid = f"r{self.next_id}"
        self.next_id += 1
        stop = StopConditions(
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            stop_token_ids=tuple(stop_ids),
            eos_token_id=eos,
            ignore_eos=ignore_eos,
        )

        def fits(forks: int) -> bool:
            # Seats for all its sequences, and a pool holding the prompt plus a spare block per fork.
            spare = forks if prompt_len % cfg.block_size else 0
            return 1 + forks <= cfg.max_num_seqs and cdiv(prompt_len, cfg.block_size) + spare <= cfg.num_blocks

        allowed = max(k for k in range(num_forks + 1) if fits(k))
        if allowed < num_forks:
            self._expect_rejected(Request(rid, prompt, stop, fork_ids=[f"{rid}#{i}" for i in range(1, num_forks + 1)]))
            event("add rejected: too many sequences for max_num_seqs or the pool")
        fork_ids = [f"{rid}#{i}" for i in range(1, allowed + 1)]
        request = Request(request_id=rid, prompt_token_ids=prompt, stop=stop, fork_ids=list(fork_ids))
        used = self.scheduler.block_manager.num_used_blocks
        self.scheduler.add(request)
        assert self.scheduler.block_manager.num_used_blocks == used  # adding allocates nothing
        assert request.status is RequestStatus.WAITING
        self.all_requests[rid] = request
        self.parent_of[rid] = rid
        if fork_ids:
            self.pending_forks[rid] = fork_ids
            event("added a request with forks")

    def _expect_rejected(self, request: Request) -> None:
        sched = self.scheduler

        def state():
            return list(sched.waiting), list(sched.running), dict(sched.requests), sched.block_manager.num_used_blocks

        before = state()
        try:
            sched.add(request)
        except ValueError:
            pass
        else:
            raise AssertionError(f"add() accepted {request.request_id!r} with forks {request.fork_ids}")
        assert state() == before

    @rule(index=st.integers(0, 10_000), how=st.sampled_from(["id", "fork_id"]))
    def add_duplicate_id(self, index, how) -> None:
        # A live request's id, or the fork id of a request that has not forked yet, is taken,
        # whether the newcomer uses it as its own id or as one of its fork ids.
        taken = self.live_ids + sorted(f for forks in self.pending_forks.values() for f in forks)
        if not taken:
            return
        rid = taken[index % len(taken)]
        if how == "id":
            request = Request(rid, [1], StopConditions(max_tokens=1))
        else:
            request = Request(f"fresh{self.next_id}", [1], StopConditions(max_tokens=1), fork_ids=[rid])
            self.next_id += 1
        if self.config.max_num_seqs >= request.num_seats:
            self._expect_rejected(request)
        if rid in self.scheduler.requests:
            assert self.scheduler.requests[rid] is self.all_requests[rid]
        else:
            assert rid not in self.all_requests  # a pending fork id: the child does not exist yet

    @rule(data=st.data())
    def step(self, data) -> None:
        self._step(lambda: data.draw(st.sampled_from(VOCAB)))

    @rule(data=st.data(), index=st.integers(0, 10_000), as_stop=st.booleans())
    def step_with_finish_in_flight(self, data, index, as_stop) -> None:
        """A request in the step is aborted (or hits a stop string) before update() runs."""

        def victim(out: SchedulerOutput):
            rid = out.scheduled[index % len(out.scheduled)].request_id
            return rid, FinishReason.STOP if as_stop else FinishReason.ABORT

        self._step(lambda: data.draw(st.sampled_from(VOCAB)), abort_in_flight=victim)

    @rule(index=st.integers(0, 10_000))
    def finish_stop_string(self, index) -> None:
        if not self.scheduler.requests:
            return
        rid = self.live_ids[index % len(self.live_ids)]
        used = self.scheduler.block_manager.num_used_blocks
        held = self._exclusive_blocks(rid)
        request = self.scheduler.finish(rid, FinishReason.STOP, "</s>")
        assert request is self.all_requests[rid]
        assert request.stop_reason == "</s>"
        assert self.scheduler.block_manager.num_used_blocks == used - held
        self._mark_finished(request, FinishReason.STOP)

    @rule(index=st.integers(0, 10_000), which=st.sampled_from(["any", "waiting", "running", "preempted"]))
    def abort(self, index, which) -> None:
        sched = self.scheduler
        if not sched.requests:
            return
        if which == "waiting":
            pool = [r.request_id for r in sched.waiting]
        elif which == "running":
            pool = [r.request_id for r in sched.running]
        elif which == "preempted":
            pool = [r.request_id for r in sched.waiting if r.status is RequestStatus.PREEMPTED]
        else:
            pool = self.live_ids
        if not pool:
            pool = self.live_ids
        rid = pool[index % len(pool)]
        used = sched.block_manager.num_used_blocks
        held = self._exclusive_blocks(rid)
        request = sched.abort(rid)
        assert request is self.all_requests[rid]
        assert sched.block_manager.num_used_blocks == used - held
        self._mark_finished(request, FinishReason.ABORT)

    @rule(index=st.integers(0, 10_000))
    def abort_finished_is_noop(self, index) -> None:
        if not self.finished_ids:
            return
        ids = sorted(self.finished_ids)
        rid = ids[index % len(ids)]
        request = self.all_requests[rid]
        reason = request.finish_reason
        assert self.scheduler.abort(rid) is None
        assert self.scheduler.abort(rid + "-unknown") is None
        assert request.finish_reason is reason

    # ------------------------------------------------------------------ invariants

    @invariant()
    def block_accounting(self) -> None:
        bm = self.scheduler.block_manager
        bm.check_invariants()
        assert bm.num_free_blocks + bm.num_used_blocks == bm.num_total_blocks == self.config.num_blocks
        holders: dict[int, list[str]] = {}
        position: dict[int, int] = {}
        for rid in bm.holders():
            table = bm.block_table(rid)
            for index, block_id in enumerate(table):
                assert 0 <= block_id < self.config.num_blocks
                holders.setdefault(block_id, []).append(rid)
                # A shared block sits at the same place (the same prompt tokens) in every table.
                assert position.setdefault(block_id, index) == index, f"block {block_id} at two positions"
        for block_id, rids in holders.items():
            if len(rids) > 1:
                assert self._may_share(block_id, rids), f"block {block_id} held by {rids}"
                assert bm.pool.blocks[block_id].ref_count == len(rids)
        assert len(holders) == bm.num_used_blocks

    @invariant()
    def only_running_requests_hold_blocks(self) -> None:
        sched = self.scheduler
        bm = sched.block_manager
        running = {r.request_id for r in sched.running}
        for rid in bm.holders():
            if bm.block_table(rid):
                assert rid in running, f"{rid} holds blocks but is not running"
        for request in sched.waiting:
            assert bm.block_table(request.request_id) == []
            assert request.num_computed_tokens == 0
        for rid in self.finished_ids:
            assert bm.block_table(rid) == []
        for request in sched.running:
            table = bm.block_table(request.request_id)
            # Covers what is in the cache, and no more than the request's tokens could use.
            assert len(table) * self.config.block_size >= request.num_computed_tokens
            assert len(table) <= cdiv(request.num_tokens, self.config.block_size)

    @invariant()
    def queues_are_consistent(self) -> None:
        sched = self.scheduler
        waiting = [r.request_id for r in sched.waiting]
        running = [r.request_id for r in sched.running]
        assert len(set(waiting)) == len(waiting) and len(set(running)) == len(running)
        assert not set(waiting) & set(running)
        assert set(waiting) | set(running) == set(sched.requests)
        assert len(running) <= self.config.max_num_seqs
        # Seats: running sequences plus the forks their not-yet-forked parents will add.
        assert sum(r.num_seats for r in sched.running) <= self.config.max_num_seqs
        assert not set(sched.requests) & self.finished_ids
        assert sched.has_unfinished() == bool(sched.requests)
        for request in sched.running:
            assert request.status is RequestStatus.RUNNING
        for request in sched.waiting:
            assert request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        for rid in self.finished_ids:
            request = self.all_requests[rid]
            assert request.status is RequestStatus.FINISHED and request.finish_reason is not None

    @invariant()
    def forks_are_consistent(self) -> None:
        sched = self.scheduler
        live_pending = {rid: r.fork_ids for rid, r in sched.requests.items() if r.fork_ids}
        assert live_pending == self.pending_forks
        for rid, fork_ids in self.pending_forks.items():
            for child_id in fork_ids:
                # Children exist only after their parent's sampling step.
                assert child_id not in self.all_requests and child_id not in sched.requests
            assert self.all_requests[rid].num_output_tokens == 0
        for rid in sched.requests:
            assert rid in self.parent_of, f"{rid} is live but was never added nor forked"

    @invariant()
    def progress_bounds(self) -> None:
        for request in self.scheduler.requests.values():
            # Strictly less: a live request always has a token left to compute (a prompt
            # remainder or its last sampled token), which is what keeps every step non-empty.
            assert 0 <= request.num_computed_tokens < request.num_tokens
            assert request.num_tokens <= self.config.max_model_len
            assert request.num_output_tokens < request.stop.max_tokens

    # ------------------------------------------------------------------ teardown

    def teardown(self) -> None:
        if not hasattr(self, "scheduler"):
            return
        sched = self.scheduler
        tokens = iter(range(10**9))
        for _ in range(MAX_DRAIN_STEPS):
            if not sched.has_unfinished():
                break
            # Cycle through the vocabulary: eos/stop ids come up, max_tokens bounds the rest.
            self._step(lambda: VOCAB[next(tokens) % len(VOCAB)])
            self.block_accounting()
            self.only_running_requests_hold_blocks()
            self.queues_are_consistent()
            self.forks_are_consistent()
            self.progress_bounds()
        else:
            raise AssertionError(f"not drained after {MAX_DRAIN_STEPS} steps: deadlock or starvation")
        assert not sched.waiting and not sched.running
        assert sched.block_manager.num_used_blocks == 0
        assert sched.block_manager.num_free_blocks == self.config.num_blocks
        sched.block_manager.check_invariants()
        assert sched.schedule().is_empty


SchedulerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
test_scheduler_state_machine = SchedulerMachine.TestCase
