"""Stateful property test of the scheduler: random adds (some forking into n > 1 sequences),
steps, external finishes and aborts over a small KV pool, with the block-accounting, budget,
preemption, fork and liveness invariants checked after every rule and a full drain at the end
of every run.

With prefix caching on (drawn per run), prompts often share one of a few random prefixes or
extend an earlier request's history, so that cache hits, revivals of free cached blocks and
evictions all happen. A shadow KV cache (each slot holds the identity of the prefix whose K/V
were written there) checks that every scheduled request attends to exactly its own tokens,
whether they were computed by itself, shared at a fork or found in the prefix cache."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine.scheduler import (
    FinishReason,
    Request,
    RequestStatus,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    StopConditions,
)
from engine.scheduler.prefix_hash import hash_block

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
        # On in 3 runs out of 4 (shrinking towards off).
        enable_prefix_caching=draw(st.booleans()) or draw(st.booleans()),
    )


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(config=configs(), data=st.data())
    def setup(self, config: SchedulerConfig, data) -> None:
        self.config = config
        self.scheduler = Scheduler(config)
        # A few shared prompt prefixes (a few blocks, not always block-aligned) from the small vocab.
        bs = config.block_size
        longest = max(1, min(config.max_model_len // 2, 4 * max(bs, 4)))
        self.prefixes = []
        for i in range(data.draw(st.integers(2, 3), label="num_prefixes")):
            blocks = data.draw(st.integers(1, 4), label=f"prefix{i}_blocks")
            size = min(longest, blocks * bs + data.draw(st.integers(0, bs - 1), label=f"prefix{i}_extra"))
            self.prefixes.append(data.draw(st.lists(st.sampled_from(VOCAB), min_size=size, max_size=size)))
        self.next_id = 0
        self.all_requests: dict[str, Request] = {}  # every request ever added, live or finished
        self.finished_ids: set[str] = set()
        # Fork model: live requests that have not forked yet -> their fork ids; every
        # sequence -> the request it came from (itself for a request that was added); and each
        # block shared at a fork -> the family (parent and children) allowed to hold it together.
        self.pending_forks: dict[str, list[str]] = {}
        self.parent_of: dict[str, str] = {}
        self.shared_holders: dict[int, frozenset[str]] = {}
        self._setup_cache_model()

    # ------------------------------------------------------------------ prefix-cache model

    def _setup_cache_model(self) -> None:
        """Shadow state, and checks wrapped around the pool's allocate/take_cached and the block
        manager's take_cached_prefix (instance attributes: the scheduler calls them as usual)."""
        cfg = self.config
        bm = self.scheduler.block_manager
        pool = bm.pool
        # Shadow KV cache: block id -> one entry per slot, the id of the prefix (all tokens up to
        # and including that position) whose K/V the engine wrote there; None if never written.
        self.kv: dict[int, list[int | None]] = {b: [None] * cfg.block_size for b in range(cfg.num_blocks)}
        self._prefix_ids: dict[tuple[int, int], int] = {}  # (id of the prefix before, token) -> id
        self._pids: dict[str, list[int]] = {}  # request id -> prefix id of each of its positions
        self._chains: dict[str, list[bytes]] = {}  # request id -> chain hash of each of its full blocks
        self.ever_admitted: set[str] = set()
        self._lookups: list[tuple[str, int]] = []  # this step's take_cached_prefix calls: (id, tokens found)

        def holders_of() -> dict[int, list[str]]:
            held: dict[int, list[str]] = {}
            for rid in bm.holders():
                for block_id in bm.block_table(rid):
                    held.setdefault(block_id, []).append(rid)
            return held

        original_allocate = pool.allocate

        def allocate(count: int):
            # Eviction happens here, and only to blocks nobody holds: check it at the moment it happens.
            free_before = [b.block_id for b in pool.blocks if pool.is_free(b)]
            hashed_before = {b.block_id: b.block_hash for b in pool.blocks if b.block_hash is not None}
            held_before = holders_of()
            evictions_before = pool.num_evictions
            taken = original_allocate(count)
            taken_ids = [b.block_id for b in taken]
            evicted = [bid for bid in taken_ids if bid in hashed_before]
            for block in taken:
                assert block.block_id in free_before, f"allocated block {block.block_id}, which was not free"
                assert block.block_id not in held_before, (
                    f"allocated block {block.block_id} held by {held_before[block.block_id]}"
                )
                assert block.ref_count == 1 and block.block_hash is None and block.token_ids is None
            for block_id, block_hash in hashed_before.items():
                if block_id not in taken_ids:  # everything else keeps its cached content
                    assert pool.blocks[block_id].block_hash == block_hash, f"block {block_id} lost its hash"
            assert pool.num_evictions == evictions_before + len(evicted)
            assert pool.num_cached_blocks == len(hashed_before) - len(evicted)
            if evicted:
                event("allocation evicted a cached block")
                if len(free_before) > len(taken) and any(
                    pool.blocks[bid].block_hash is not None for bid in free_before if bid not in taken_ids
                ):
                    event("eviction while other cached blocks stay free")
            return taken

        original_take_cached = pool.take_cached

        def take_cached(block_hash: bytes, token_ids: tuple[int, ...], group: int = 0):
            owner = next((b for b in pool.blocks if b.block_hash == block_hash), None)
            ref_before = owner.ref_count if owner is not None else None
            block = original_take_cached(block_hash, token_ids, group)
            if owner is None or owner.token_ids != tuple(token_ids):
                assert block is None, "take_cached served a block whose tokens differ"
            else:
                assert block is owner and block.block_hash == block_hash and block.token_ids == tuple(token_ids)
                assert hash_block(block.parent_hash, block.token_ids) == block_hash
                assert block.ref_count == ref_before + 1 and not pool.is_free(block)
                revived = ref_before == 0
                event("prefix hit revived a free cached block" if revived else "prefix hit shared a block in use")
            return block

        original_take_prefix = bm.take_cached_prefix

        def take_cached_prefix(request_id: str, num_tokens: int, tokens):
            # Oracle: the longest run of leading full blocks (leaving >= 1 token) cached under
            # the request's chain hashes with its tokens.
            expected = 0
            if cfg.enable_prefix_caching:
                full = tokens(0, num_tokens)
                cached = {b.block_hash: b for b in pool.blocks if b.block_hash is not None}
                bs = cfg.block_size
                parent = None
                for index in range((num_tokens - 1) // bs):
                    chunk = tuple(full[index * bs : (index + 1) * bs])
                    parent = hash_block(parent, chunk)
                    if parent not in cached or cached[parent].token_ids != chunk:
                        break
                    expected += bs
            assert bm.block_table(request_id) == [], f"{request_id} looks up the cache while holding blocks"
            found = original_take_prefix(request_id, num_tokens, tokens)
            assert found == expected, f"{request_id}: {found} cached tokens, expected {expected}"
            assert len(bm.block_table(request_id)) * cfg.block_size == found
            self._lookups.append((request_id, found))
            return found

        pool.allocate = allocate
        pool.take_cached = take_cached
        bm.take_cached_prefix = take_cached_prefix

    def _tokens(self, rid: str) -> list[int]:
        request = self.all_requests[rid]
        return request.prompt_token_ids + request.output_token_ids

    def _prefix_id_list(self, rid: str) -> list[int]:
        """Prefix ids of every position of ``rid``'s tokens (tokens only grow: extended in place)."""
        full = self._tokens(rid)
        pids = self._pids.setdefault(rid, [])
        for pos in range(len(pids), len(full)):
            key = (pids[-1] if pids else -1, full[pos])
            pids.append(self._prefix_ids.setdefault(key, len(self._prefix_ids)))
        return pids

    def _chain(self, rid: str) -> list[bytes]:
        """Chain hashes of ``rid``'s full blocks, computed independently of the block manager."""
        full = self._tokens(rid)
        bs = self.config.block_size
        chain = self._chains.setdefault(rid, [])
        for index in range(len(chain), len(full) // bs):
            chain.append(hash_block(chain[-1] if chain else None, full[index * bs : (index + 1) * bs]))
        return chain

    def _run_on_shadow_kv(self, out: SchedulerOutput) -> None:
        """What the engine does with a step: attend to the cached context, write the new K/V."""
        bm = self.scheduler.block_manager
        bs = self.config.block_size
        for item in out.scheduled:
            pids = self._prefix_id_list(item.request_id)
            table = item.block_tables[0]
            # The context (positions before start_pos) holds exactly this request's prefixes.
            for index in range(cdiv(item.start_pos, bs)):
                upto = min(bs, item.start_pos - index * bs)
                assert self.kv[table[index]][:upto] == pids[index * bs : index * bs + upto], (
                    f"{item.request_id}: block {table[index]} (#{index}) holds other K/V than its tokens"
                )
            # It writes only into blocks nobody else holds and that are not cached.
            for index in range(item.start_pos // bs, cdiv(item.seq_len, bs)):
                block = bm.pool.blocks[table[index]]
                assert block.ref_count == 1, f"{item.request_id} writes into shared block {block.block_id}"
                assert block.block_hash is None, f"{item.request_id} overwrites cached block {block.block_id}"
            for pos in range(item.start_pos, item.seq_len):
                self.kv[table[pos // bs]][pos % bs] = pids[pos]

    def _check_cached_blocks(self) -> None:
        """Every cached block a request holds is at its chain's place, with its tokens, computed."""
        bm = self.scheduler.block_manager
        bs = self.config.block_size
        for rid in bm.holders():
            table = bm.block_table(rid)
            if not table:
                continue
            full = self._tokens(rid)
            chain = self._chain(rid)
            request = self.all_requests[rid]
            for index, block_id in enumerate(table):
                block = bm.pool.blocks[block_id]
                if block.block_hash is None:
                    continue
                assert block.token_ids == tuple(full[index * bs : (index + 1) * bs]), (
                    f"{rid}: cached block {block_id} holds {block.token_ids}, not its tokens at #{index}"
                )
                assert index < len(chain) and block.block_hash == chain[index], f"{rid}: block {block_id} mis-hashed"
                assert (index + 1) * bs <= request.num_computed_tokens, f"{rid}: cached block {block_id} not computed"
                # Its K/V are those of this request's prefix (what a later hit will attend to).
                assert self.kv[block_id] == self._prefix_id_list(rid)[index * bs : (index + 1) * bs]

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
        and they all belong to that fork's family, or (prefix hit) it is a cached full block
        whose tokens are the holder's tokens at that position."""
        bm = self.scheduler.block_manager
        bs = self.config.block_size
        block = bm.pool.blocks[block_id]
        family = self.shared_holders.get(block_id, frozenset())
        for rid in holders:
            if rid in family:
                continue
            if not self.config.enable_prefix_caching or block.block_hash is None:
                return False
            index = bm.block_table(rid).index(block_id)
            if block.token_ids != tuple(self._tokens(rid)[index * bs : (index + 1) * bs]):
                return False
        if not set(holders) <= family:
            event("unrelated requests share a cached block")
        return True

    def _check_step_output(self, out: SchedulerOutput, before: dict[str, tuple[int, int]]) -> None:
        """Checks on one schedule() result; ``before`` maps live ids to (num_computed, num_tokens)."""
        cfg = self.config
        ids = [s.request_id for s in out.scheduled]
        assert len(ids) == len(set(ids)), f"request scheduled twice in one step: {ids}"
        assert len(ids) <= cfg.max_num_seqs
        assert out.num_batched_tokens <= cfg.max_num_batched_tokens
        assert not set(ids) & set(out.preempted_ids), "a request was both scheduled and preempted"
        assert len(out.preempted_ids) == len(set(out.preempted_ids))

        admitted = self._admitted_this_step(out)
        for item in out.scheduled:
            request = self.scheduler.requests[item.request_id]
            computed, num_tokens = before[item.request_id]
            assert request.status is RequestStatus.RUNNING
            assert item.num_tokens >= 1
            if item.request_id in admitted:
                # Admitted with nothing computed: it starts after its prefix-cache hit, whole
                # blocks, leaving at least one token to compute (0 without caching).
                assert computed == 0
                assert item.start_pos == request.num_computed_tokens
                assert item.start_pos % cfg.block_size == 0 and item.start_pos < num_tokens
                if not cfg.enable_prefix_caching:
                    assert item.start_pos == 0
                if self._cached_before[item.request_id] is None:  # first admission
                    assert request.num_cached_tokens == item.start_pos
                else:
                    assert request.num_cached_tokens == self._cached_before[item.request_id]
            else:
                # Continues where the cache stops.
                assert item.start_pos == computed == request.num_computed_tokens
            assert item.seq_len <= num_tokens
            assert item.sample == (item.seq_len == request.num_tokens)
            full = request.prompt_token_ids + request.output_token_ids
            assert item.token_ids == full[item.start_pos : item.seq_len]
            assert len(item.block_tables[0]) * cfg.block_size >= item.seq_len, (
                f"{item.request_id}: table {item.block_tables[0]} does not cover {item.seq_len} tokens"
            )
            assert item.block_tables[0] == self.scheduler.block_manager.block_table(item.request_id)

        # Block tables of the requests running in this step are disjoint, except for the full
        # prompt blocks a fork family shares and the cached blocks found by prefix hits.
        seen: dict[int, list[str]] = {}
        for item in out.scheduled:
            for block_id in item.block_tables[0]:
                seen.setdefault(block_id, []).append(item.request_id)
        for block_id, holders in seen.items():
            if len(holders) > 1:
                assert self._may_share(block_id, holders), f"block {block_id} in {holders}"

        # Prefix-cache bookkeeping: a lookup at each admission attempt of a request with nothing
        # computed; the counters add up the admitted ones.
        sched = self.scheduler
        for rid, found in self._lookups:
            if rid not in admitted:
                assert sched.block_manager.block_table(rid) == [] and sched.requests[rid].num_computed_tokens == 0
                if found:
                    event("admission failed after a cache hit: blocks given back")
        assert [rid for rid, _ in self._lookups if rid in admitted] == [
            s.request_id for s in out.scheduled if s.request_id in admitted
        ], "every admitted request looked up the cache once"
        # The counters track lookups only when caching is on.
        looked_up = sum(before[rid][1] for rid in admitted) if sched.config.enable_prefix_caching else 0
        assert sched.prefix_cache_queries - self._queries_before == looked_up
        assert sched.prefix_cache_hits - self._hits_before == sum(
            s.start_pos for s in out.scheduled if s.request_id in admitted
        )
        for item in out.scheduled:
            if item.request_id in admitted and item.start_pos:
                event("admission hit the prefix cache")
                if self._cached_before[item.request_id] is not None:
                    event("preempted request re-admitted with a cache hit")
                if item.start_pos > self.all_requests[item.request_id].num_prompt_tokens:
                    event("cache hit covers generated tokens")

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
        self._cached_before = {rid: r.num_cached_tokens for rid, r in sched.requests.items()}
        self._queries_before, self._hits_before = sched.prefix_cache_queries, sched.prefix_cache_hits
        self._lookups = []
        pool = sched.block_manager.pool
        hashes_before = {b.block_id: b.block_hash for b in pool.blocks if b.block_hash is not None}
        holders_before: dict[int, set[str]] = {}
        for rid in sched.block_manager.holders():
            for block_id in sched.block_manager.block_table(rid):
                holders_before.setdefault(block_id, set()).add(rid)
        evictions_before = pool.num_evictions

        out = sched.schedule()
        if had_work:
            assert out.scheduled, "unfinished work but nothing scheduled: the engine would hang"
        else:
            assert out.is_empty and not out.preempted_ids
        self._check_step_output(out, before)
        self.ever_admitted |= self._admitted_this_step(out)
        self._run_on_shadow_kv(out)
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

        # The engine copies the forks' partial blocks before the next step.
        for src, dst in update.block_copies:
            self.kv[dst] = list(self.kv[src])

        # Cached content is only ever evicted from blocks that nobody held, or whose holders
        # gave them back in this step (preempted or finished).
        released = set(out.preempted_ids) | aborted | finished_ids
        for block_id, block_hash in hashes_before.items():
            if pool.blocks[block_id].block_hash != block_hash:
                assert holders_before.get(block_id, set()) <= released, (
                    f"block {block_id} evicted while held by {holders_before[block_id] - released}"
                )
        if pool.num_evictions > evictions_before:
            assert self.config.enable_prefix_caching

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
                assert bm.block_table(parent_id) == item.block_tables[0], "forking changed the parent's table"
            family = frozenset([parent_id, *fork_ids])
            for block_id in item.block_tables[0][:num_full]:
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
                    assert src == item.block_tables[0][num_full], "the copy's source is not the parent's partial block"
                    assert dst not in item.block_tables[0]
                    holders = [rid for rid, table in tables.items() if dst in table]
                    if child_id in finished_ids:
                        assert holders == []
                    else:
                        assert holders == [child_id], f"copy destination {dst} held by {holders}"
                        assert tables[child_id] == item.block_tables[0][:num_full] + [dst]
                    event("fork copied a partial block")
                elif child_id not in finished_ids:
                    assert tables[child_id] == item.block_tables[0][:num_full]
                    event("fork of a block-aligned prompt")

    # ------------------------------------------------------------------ rules

    _REQUEST_STRATEGIES = dict(
        max_tokens=st.integers(1, 20),
        min_tokens=st.integers(0, 5),
        eos=st.one_of(st.none(), st.sampled_from(VOCAB)),
        stop_ids=st.lists(st.sampled_from(VOCAB), max_size=2, unique=True),
        ignore_eos=st.booleans(),
        num_forks=st.sampled_from([0, 0, 0, 0, 1, 2]),
    )

    @rule(prompt_frac=st.floats(0.0, 1.0), data=st.data(), **_REQUEST_STRATEGIES)
    def add(self, prompt_frac, data, **stop) -> None:
        prompt_len = 1 + int(prompt_frac * (self.config.max_model_len - 2))
        self._add(data.draw(st.lists(st.sampled_from(VOCAB), min_size=prompt_len, max_size=prompt_len)), **stop)

    @rule(
        source=st.sampled_from(["prefix", "prefix", "prefix", "history"]),
        which=st.integers(0, 10_000),
        suffix_len=st.integers(0, 12),
        data=st.data(),
        **_REQUEST_STRATEGIES,
    )
    def add_sharing_a_prefix(self, source, which, suffix_len, data, **stop) -> None:
        if source == "history" and self.all_requests:
            # A follow-up turn: an earlier request's prompt and what it generated so far.
            head = self._tokens(sorted(self.all_requests)[which % len(self.all_requests)])
        else:
            # One of the run's shared prefixes.
            head = self.prefixes[which % len(self.prefixes)]
        suffix = data.draw(st.lists(st.sampled_from(VOCAB), min_size=suffix_len, max_size=suffix_len))
        self._add((list(head) + suffix)[: self.config.max_model_len - 1], **stop)

    def _add(self, prompt, max_tokens, min_tokens, eos, stop_ids, ignore_eos, num_forks) -> None:
        cfg = self.config
        prompt_len = len(prompt)
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
    def prefix_cache_is_consistent(self) -> None:
        sched = self.scheduler
        bm = sched.block_manager
        bm.check_invariants()  # also: every cached block's hash is hash_block(parent_hash, token_ids)
        assert bm.num_free_blocks + bm.num_used_blocks == bm.num_total_blocks
        if not self.config.enable_prefix_caching:
            assert bm.pool.num_cached_blocks == 0 and sched.prefix_cache_hits == 0
            assert bm.pool.num_evictions == 0
        else:
            assert sched.prefix_cache_hits <= sched.prefix_cache_queries
        self._check_cached_blocks()
        for rid, request in sched.requests.items():
            # Set once, at the first admission: the prompt tokens found then.
            if rid in self.ever_admitted:
                assert request.num_cached_tokens is not None
                assert request.num_cached_tokens % self.config.block_size == 0
            else:
                assert request.num_cached_tokens is None
        for rid in self.ever_admitted:
            request = self.all_requests[rid]
            if self.parent_of[rid] == rid:  # added (not forked): first admitted with its prompt only
                assert request.num_cached_tokens < request.num_prompt_tokens

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
            self.prefix_cache_is_consistent()
            self.progress_bounds()
        else:
            raise AssertionError(f"not drained after {MAX_DRAIN_STEPS} steps: deadlock or starvation")
        assert not sched.waiting and not sched.running
        assert sched.block_manager.num_used_blocks == 0
        assert sched.block_manager.num_free_blocks == self.config.num_blocks
        sched.block_manager.check_invariants()
        assert sched.schedule().is_empty
        if self.config.enable_prefix_caching and sched.block_manager.pool.num_cached_blocks:
            event("drained with cached blocks left free")


SchedulerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
test_scheduler_state_machine = SchedulerMachine.TestCase
