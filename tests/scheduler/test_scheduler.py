"""Deterministic unit tests of the scheduler: chunked prefill, mixed batches, preemption,
stop rules, validation, aborts, the block pool's LRU order, forks and prefix caching."""

from __future__ import annotations

import pytest

from engine.scheduler import (
    BlockManager,
    BlockPool,
    FinishReason,
    Request,
    RequestStatus,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    StopConditions,
)
from engine.scheduler.prefix_hash import hash_block


def make_scheduler(
    *,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    block_size: int = 4,
    num_blocks: int = 64,
    max_model_len: int = 64,
    enable_prefix_caching: bool = False,
) -> Scheduler:
    return Scheduler(
        SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            block_size=block_size,
            num_blocks=num_blocks,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
        )
    )


def make_request(rid: str, prompt_len: int, max_tokens: int = 100, first_token: int = 100, **stop) -> Request:
    prompt = list(range(first_token, first_token + prompt_len))
    return Request(rid, prompt, StopConditions(max_tokens=max_tokens, **stop))


def step(sched: Scheduler, token: int | dict[str, int] = 1) -> tuple[SchedulerOutput, list[Request]]:
    """One schedule() + update(), sampling ``token`` (or ``token[rid]``) for every sampling request."""
    out = sched.schedule()
    sampled = {
        s.request_id: token[s.request_id] if isinstance(token, dict) else token for s in out.scheduled if s.sample
    }
    finished = sched.update(out, {rid: [t] for rid, t in sampled.items()}).finished
    sched.block_manager.check_invariants()
    return out, finished


def by_id(out: SchedulerOutput) -> dict:
    return {s.request_id: s for s in out.scheduled}


# --------------------------------------------------------------------------- (a) chunked prefill


def test_long_prompt_is_prefilled_in_budget_sized_chunks():
    sched = make_scheduler(max_num_batched_tokens=8)
    req = make_request("a", 20)
    sched.add(req)

    chunks = []
    for _ in range(3):
        out, finished = step(sched, token=7)
        assert finished == []
        assert [s.request_id for s in out.scheduled] == ["a"]
        chunks.append(out.scheduled[0])

    assert [c.start_pos for c in chunks] == [0, 8, 16]
    assert [c.num_tokens for c in chunks] == [8, 8, 4]
    assert [c.sample for c in chunks] == [False, False, True]
    prompt = req.prompt_token_ids
    assert [c.token_ids for c in chunks] == [prompt[0:8], prompt[8:16], prompt[16:20]]
    for c in chunks:
        assert len(c.block_tables[0]) * 4 >= c.seq_len
    # Only the last chunk produced a token.
    assert req.output_token_ids == [7]
    assert req.num_computed_tokens == 20

    # Then it decodes one token at a time, feeding back the sampled token.
    out, _ = step(sched)
    (decode,) = out.scheduled
    assert (decode.start_pos, decode.token_ids, decode.sample) == (20, [7], True)


def test_non_final_chunk_update_needs_no_sampled_token():
    sched = make_scheduler(max_num_batched_tokens=8)
    sched.add(make_request("a", 12))
    out = sched.schedule()
    assert not out.scheduled[0].sample
    assert sched.update(out, {}).finished == []  # nothing to sample: no KeyError
    assert sched.requests["a"].num_computed_tokens == 8
    assert sched.requests["a"].output_token_ids == []


# --------------------------------------------------------------------------- (b) decodes alongside a chunk


def test_running_decodes_are_scheduled_every_step_alongside_a_long_prefill():
    sched = make_scheduler(max_num_batched_tokens=8)
    d1, d2 = make_request("d1", 2), make_request("d2", 3)
    sched.add(d1)
    sched.add(d2)
    out, _ = step(sched)
    assert {s.request_id for s in out.scheduled} == {"d1", "d2"}
    assert d1.num_output_tokens == d2.num_output_tokens == 1

    long = make_request("long", 30)
    sched.add(long)
    prefill_positions = []
    while long.num_output_tokens == 0:
        before = (d1.num_output_tokens, d2.num_output_tokens)
        out, finished = step(sched)
        assert finished == []
        items = by_id(out)
        assert set(items) == {"d1", "d2", "long"}
        # Decodes: one token each, sampled; the prompt chunk takes the rest of the budget.
        assert items["d1"].num_tokens == items["d2"].num_tokens == 1
        assert items["d1"].sample and items["d2"].sample
        assert out.num_batched_tokens <= 8
        assert items["long"].num_tokens == min(6, 30 - items["long"].start_pos)
        prefill_positions.append(items["long"].start_pos)
        # The decodes kept producing tokens during the prefill.
        assert (d1.num_output_tokens, d2.num_output_tokens) == (before[0] + 1, before[1] + 1)

    assert prefill_positions == [0, 6, 12, 18, 24]
    assert long.num_computed_tokens == 30


# --------------------------------------------------------------------------- (c) preemption


def test_newest_running_request_is_preempted_and_recomputed_with_its_outputs():
    # 6 blocks of 4 tokens; three 8-token prompts fill the pool exactly.
    sched = make_scheduler(block_size=4, num_blocks=6, max_model_len=24)
    a = make_request("a", 8, max_tokens=2, first_token=10)
    b = make_request("b", 8, first_token=20)
    c = make_request("c", 8, first_token=30)
    for r in (a, b, c):
        sched.add(r)

    out, _ = step(sched, token={"a": 1, "b": 2, "c": 3})
    assert [s.request_id for s in out.scheduled] == ["a", "b", "c"]
    assert sched.block_manager.num_free_blocks == 0
    c_blocks = set(sched.block_manager.block_table("c"))
    assert len(c_blocks) == 2
    assert c.output_token_ids == [3]

    # Request d arrives while everything is full: it must not jump ahead of the preempted c.
    d = make_request("d", 2, first_token=40)
    sched.add(d)

    # Each decode now needs a third block. a (oldest) asks first: the newest, c, is preempted.
    out = sched.schedule()
    assert out.preempted_ids == ["c"]
    assert [s.request_id for s in out.scheduled] == ["a", "b"]  # nothing admitted in a preempting step
    assert c.status is RequestStatus.PREEMPTED
    assert c.num_computed_tokens == 0
    assert c.num_preemptions == 1 and sched.num_preemptions == 1
    assert [r.request_id for r in sched.waiting] == ["c", "d"]
    assert sched.block_manager.block_table("c") == []
    # c's two freed blocks are what a and b just grew into.
    grown = {sched.block_manager.block_table("a")[-1], sched.block_manager.block_table("b")[-1]}
    assert grown == c_blocks
    assert c.output_token_ids == [3]  # generated tokens are kept
    finished = sched.update(out, {"a": [1], "b": [2]}).finished
    assert finished == [a] and a.finish_reason is FinishReason.LENGTH  # max_tokens=2 frees a's 3 blocks

    # c comes back first, and recomputes its prompt plus what it had generated, from position 0.
    out, _ = step(sched, token={"b": 2, "c": 3, "d": 4})
    items = by_id(out)
    assert "c" in items
    assert items["c"].start_pos == 0
    assert items["c"].token_ids == c.prompt_token_ids + [3]
    assert items["c"].sample
    assert len(items["c"].block_tables[0]) * 4 >= 9
    assert c.status is RequestStatus.RUNNING
    assert c.output_token_ids == [3, 3]
    assert c.num_computed_tokens == 9
    assert [r.request_id for r in sched.running][:2] == ["b", "c"]


def test_request_that_cannot_grow_preempts_itself_when_it_is_the_newest():
    # Two requests of 8 tokens in 4 blocks; the second cannot get a third block and is the newest.
    sched = make_scheduler(block_size=4, num_blocks=4, max_model_len=16)
    a = make_request("a", 7, first_token=10)
    b = make_request("b", 8, first_token=20)
    sched.add(a)
    sched.add(b)
    step(sched)  # a: 7 cached + 1 sampled, b: 8 cached + 1 sampled; all 4 blocks used
    assert sched.block_manager.num_free_blocks == 0

    out = sched.schedule()
    # a still fits in its 2 blocks (8 tokens); b needs a third: b is the newest, so b goes.
    assert [s.request_id for s in out.scheduled] == ["a"]
    assert out.preempted_ids == ["b"]
    assert b.status is RequestStatus.PREEMPTED and sched.waiting[0] is b
    assert sched.block_manager.block_table("b") == []
    assert sched.block_manager.num_free_blocks == 2
    sched.update(out, {"a": [1]})


def test_preempted_request_with_long_history_is_recomputed_in_chunks():
    sched = make_scheduler(max_num_batched_tokens=8, block_size=4, num_blocks=6, max_model_len=24)
    a = make_request("a", 8, first_token=10, max_tokens=8)
    b = make_request("b", 8, first_token=20)
    sched.add(a)
    sched.add(b)
    for _ in range(6):
        out, _ = step(sched, token={"a": 1, "b": 5})
        if out.preempted_ids:
            break
    assert out.preempted_ids == ["b"]
    history = b.prompt_token_ids + b.output_token_ids
    assert b.output_token_ids == [5, 5, 5] and len(history) == 11

    # Recompute b (it may be preempted again while a still grows: then it starts over).
    chunks = []
    for _ in range(20):
        out, _ = step(sched, token={"a": 1, "b": 5})
        if "b" in out.preempted_ids:
            chunks = []
        if "b" in by_id(out):
            chunks.append(by_id(out)["b"])
            if chunks[-1].sample:
                break
    assert a.is_finished
    assert len(chunks) >= 2 and chunks[0].start_pos == 0
    assert sum((c.token_ids for c in chunks), []) == history
    assert [c.sample for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert b.output_token_ids == [5, 5, 5, 5]


# --------------------------------------------------------------------------- (d) stop conditions


def run_one(tokens: list[int], max_model_len: int = 64, prompt_len: int = 4, **stop) -> Request:
    """Run a single request sampling ``tokens`` in order until it finishes; return it."""
    sched = make_scheduler(max_model_len=max_model_len)
    req = make_request("r", prompt_len, **stop)
    sched.add(req)
    for token in tokens:
        _, finished = step(sched, token=token)
        if finished:
            assert finished == [req]
            assert not sched.has_unfinished()
            assert sched.block_manager.num_used_blocks == 0
            return req
    return req


def test_max_tokens_finishes_with_length():
    req = run_one([5] * 10, max_tokens=3)
    assert req.is_finished
    assert req.finish_reason is FinishReason.LENGTH and req.stop_reason is None
    assert req.output_token_ids == [5, 5, 5]


def test_eos_finishes_with_stop_and_no_stop_reason():
    req = run_one([5, 2, 5, 5], max_tokens=10, eos_token_id=2)
    assert req.finish_reason is FinishReason.STOP
    assert req.stop_reason is None
    assert req.output_token_ids == [5, 2]


def test_stop_token_id_finishes_with_that_id_as_stop_reason():
    req = run_one([5, 9, 7, 5], max_tokens=10, eos_token_id=2, stop_token_ids=(7, 8))
    assert req.finish_reason is FinishReason.STOP
    assert req.stop_reason == 7
    assert req.output_token_ids == [5, 9, 7]


def test_ignore_eos_keeps_generating_through_eos():
    req = run_one([2] * 10, max_tokens=4, eos_token_id=2, ignore_eos=True)
    assert req.finish_reason is FinishReason.LENGTH
    assert req.output_token_ids == [2, 2, 2, 2]


def test_min_tokens_suppresses_eos_and_stop_ids_until_reached():
    req = run_one([2, 7, 2, 5], max_tokens=10, min_tokens=3, eos_token_id=2, stop_token_ids=(7,))
    assert req.finish_reason is FinishReason.STOP and req.stop_reason is None
    assert req.output_token_ids == [2, 7, 2]  # the third token may stop


def test_max_tokens_wins_over_min_tokens():
    req = run_one([5] * 10, max_tokens=2, min_tokens=5, eos_token_id=2)
    assert req.finish_reason is FinishReason.LENGTH
    assert req.output_token_ids == [5, 5]


# --------------------------------------------------------------------------- (e) max_model_len


def test_reaching_max_model_len_finishes_with_length():
    req = run_one([5] * 10, max_model_len=16, prompt_len=13, max_tokens=100)
    assert req.finish_reason is FinishReason.LENGTH
    assert req.num_tokens == 16
    assert req.output_token_ids == [5, 5, 5]


def test_prompt_of_exactly_max_model_len_gets_one_token_then_length():
    sched = make_scheduler(block_size=4, num_blocks=4, max_model_len=16)
    req = make_request("r", 16, max_tokens=100)
    sched.add(req)
    out, finished = step(sched, token=5)
    assert out.scheduled[0].num_tokens == 16
    assert finished == [req] and req.finish_reason is FinishReason.LENGTH
    assert req.output_token_ids == [5]
    assert sched.block_manager.num_used_blocks == 0


# --------------------------------------------------------------------------- (f) add() validation


def test_prompt_longer_than_max_model_len_is_rejected():
    sched = make_scheduler(max_model_len=16)
    with pytest.raises(ValueError) as info:
        sched.add(make_request("r", 17))
    assert "17" in str(info.value) and "16" in str(info.value)
    assert not sched.has_unfinished() and not sched.waiting
    sched.add(make_request("r", 16))  # the id was not taken by the rejected request


def test_duplicate_request_id_is_rejected():
    sched = make_scheduler()
    first = make_request("r", 4)
    sched.add(first)
    with pytest.raises(ValueError, match="'r'"):
        sched.add(make_request("r", 5))
    assert list(sched.waiting) == [first] and sched.requests["r"] is first
    step(sched)  # running now: still a duplicate
    with pytest.raises(ValueError):
        sched.add(make_request("r", 5))


# --------------------------------------------------------------------------- (g) config validation


def test_pool_smaller_than_max_model_len_is_rejected():
    with pytest.raises(ValueError, match="max_model_len=17"):
        SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=8, block_size=4, num_blocks=4, max_model_len=17)
    # Exactly enough is fine.
    SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=8, block_size=4, num_blocks=4, max_model_len=16)


CONFIG_FIELDS = ["max_num_seqs", "max_num_batched_tokens", "block_size", "num_blocks", "max_model_len"]


@pytest.mark.parametrize("field", CONFIG_FIELDS)
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_config_values_are_rejected(field, value):
    kwargs = dict(max_num_seqs=1, max_num_batched_tokens=8, block_size=4, num_blocks=4, max_model_len=16)
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        SchedulerConfig(**kwargs)


# --------------------------------------------------------------------------- (h) abort


def test_abort_frees_blocks_at_once_and_update_of_its_step_skips_it():
    sched = make_scheduler(block_size=4)
    a, b = make_request("a", 10), make_request("b", 6)
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    assert sched.block_manager.num_used_blocks == 3 + 2

    assert sched.abort("a") is a
    assert a.status is RequestStatus.FINISHED and a.finish_reason is FinishReason.ABORT
    assert sched.block_manager.block_table("a") == []
    assert sched.block_manager.num_used_blocks == 2
    sched.block_manager.check_invariants()

    finished = sched.update(out, {"a": [1], "b": [2]}).finished  # the engine sampled for a anyway
    assert finished == []
    assert a.output_token_ids == [] and a.num_computed_tokens == 0
    assert b.output_token_ids == [2] and b.num_computed_tokens == 6
    assert [r.request_id for r in sched.running] == ["b"]


def test_abort_waiting_and_preempted_requests_and_unknown_ids():
    sched = make_scheduler(block_size=4, num_blocks=4, max_model_len=16)
    a, b, c = make_request("a", 7), make_request("b", 8), make_request("c", 4)
    sched.add(a)
    sched.add(b)
    step(sched)
    out, _ = step(sched)
    assert out.preempted_ids == ["b"]
    sched.add(c)
    assert [r.request_id for r in sched.waiting] == ["b", "c"]

    assert sched.abort("b") is b and b.finish_reason is FinishReason.ABORT  # preempted
    assert sched.abort("c") is c and c.finish_reason is FinishReason.ABORT  # waiting, never scheduled
    assert not sched.waiting
    assert sched.abort("b") is None  # already finished
    assert sched.abort("nope") is None
    assert sched.finish("nope", FinishReason.STOP, "stop") is None
    assert sched.abort("a") is a
    assert not sched.has_unfinished()
    assert sched.block_manager.num_used_blocks == 0
    assert sched.schedule().is_empty


def test_finish_with_stop_string_from_outside():
    sched = make_scheduler()
    a = make_request("a", 4)
    sched.add(a)
    step(sched)
    assert sched.finish("a", FinishReason.STOP, "###") is a
    assert (a.finish_reason, a.stop_reason, a.status) == (FinishReason.STOP, "###", RequestStatus.FINISHED)
    assert sched.block_manager.num_used_blocks == 0 and not sched.running


# --------------------------------------------------------------------------- (i) block pool


def test_block_pool_reuses_freed_blocks_in_lru_order():
    pool = BlockPool(4)
    blocks = pool.allocate(4)
    assert [b.block_id for b in blocks] == [0, 1, 2, 3]
    assert pool.num_free_blocks == 0
    pool.free([blocks[2]])
    pool.free([blocks[0]])
    pool.free([blocks[3]])
    assert pool.num_free_blocks == 3
    assert [b.block_id for b in pool.allocate(3)] == [2, 0, 3]
    with pytest.raises(RuntimeError):
        pool.allocate(1)


def test_block_pool_untouched_blocks_come_before_freed_ones():
    pool = BlockPool(3)
    (first,) = pool.allocate(1)
    pool.free([first])
    assert [b.block_id for b in pool.allocate(3)] == [1, 2, 0]


def test_block_pool_double_free_raises():
    pool = BlockPool(2)
    (block,) = pool.allocate(1)
    pool.free([block])
    with pytest.raises(RuntimeError):
        pool.free([block])


def test_block_manager_frees_a_table_tail_first_and_allocates_atomically():
    bm = BlockManager(num_blocks=4, block_size=4)
    assert bm.allocate_slots("a", 12)
    assert bm.block_table("a") == [0, 1, 2]
    assert not bm.allocate_slots("b", 8)  # needs 2, only 1 free: nothing taken
    assert bm.num_free_blocks == 1 and bm.block_table("b") == []
    bm.check_invariants()
    bm.free("a")
    assert bm.allocate_slots("b", 16)
    assert bm.block_table("b") == [3, 2, 1, 0]  # the tail of a's table is reused first
    bm.check_invariants()


# --------------------------------------------------------------------------- (j) n > 1: forks


def make_forking(rid: str, prompt_len: int, n: int, max_tokens: int = 100, first_token: int = 100) -> Request:
    request = make_request(rid, prompt_len, max_tokens=max_tokens, first_token=first_token)
    request.fork_ids = [f"{rid}#{i}" for i in range(1, n)]
    return request


def fork_step(sched: Scheduler, tokens: dict[str, list[int]] | None = None):
    """One schedule() + update(); a sampling item gets ``tokens[rid]`` (default 1 per sample)."""
    tokens = tokens or {}
    out = sched.schedule()
    sampled = {s.request_id: tokens.get(s.request_id, [1] * s.num_samples) for s in out.scheduled if s.sample}
    for item in out.scheduled:
        assert len(sampled.get(item.request_id, ())) == item.num_samples
    update = sched.update(out, sampled)
    sched.block_manager.check_invariants()
    return out, update


def test_fork_shares_full_prompt_blocks_copies_the_partial_one_and_frees_all():
    sched = make_scheduler(block_size=4, num_blocks=16)
    a = make_forking("a", 10, n=3, max_tokens=3)  # 2 full blocks + a partial one of 2 tokens
    sched.add(a)
    bm = sched.block_manager

    out, update = fork_step(sched, {"a": [5, 6, 7]})
    (item,) = out.scheduled
    assert item.num_samples == 3 and item.num_tokens == 10
    parent_table = bm.block_table("a")
    assert parent_table == item.block_tables[0] and len(parent_table) == 3
    assert [c.request_id for c in update.forked] == ["a#1", "a#2"]
    c1, c2 = update.forked
    assert (a.output_token_ids, c1.output_token_ids, c2.output_token_ids) == ([5], [6], [7])
    for child in (c1, c2):
        assert child.prompt_token_ids == a.prompt_token_ids
        assert child.num_computed_tokens == a.num_computed_tokens == 10
        assert child.status is RequestStatus.RUNNING and sched.requests[child.request_id] is child
    assert [r.request_id for r in sched.running] == ["a", "a#1", "a#2"]
    assert a.fork_ids == []

    # Full prompt blocks: one copy, three holders. The partial block: a private copy per child.
    t1, t2 = bm.block_table("a#1"), bm.block_table("a#2")
    assert t1[:2] == t2[:2] == parent_table[:2]
    assert [bm.pool.blocks[b].ref_count for b in parent_table] == [3, 3, 1]
    assert update.block_copies == [(parent_table[2], t1[2]), (parent_table[2], t2[2])]
    assert len({parent_table[2], t1[2], t2[2]}) == 3
    assert bm.num_used_blocks == 2 + 3  # three separate requests would hold 3 x 3 = 9

    # Each sequence then decodes on its own table, feeding back its own token.
    out, update = fork_step(sched, {"a": [1], "a#1": [2], "a#2": [3]})
    items = by_id(out)
    assert {rid: (s.start_pos, s.token_ids, s.num_samples) for rid, s in items.items()} == {
        "a": (10, [5], 1), "a#1": (10, [6], 1), "a#2": (10, [7], 1)
    }
    assert update.forked == [] and update.block_copies == []

    out, update = fork_step(sched)  # third token: max_tokens=3 ends all three
    assert {r.request_id for r in update.finished} == {"a", "a#1", "a#2"}
    assert all(r.finish_reason is FinishReason.LENGTH for r in update.finished)
    assert not sched.has_unfinished() and bm.num_used_blocks == 0


def test_fork_of_a_block_aligned_prompt_copies_nothing():
    sched = make_scheduler(block_size=4, num_blocks=16)
    sched.add(make_forking("a", 8, n=2))
    out, update = fork_step(sched, {"a": [5, 6]})
    assert update.block_copies == []
    bm = sched.block_manager
    assert bm.block_table("a#1") == bm.block_table("a") == out.scheduled[0].block_tables[0]
    assert sched.block_manager.num_used_blocks == 2


def test_fork_step_waits_for_its_spare_block_and_keeps_it_from_later_requests():
    # 4 blocks of 4 tokens. a (5 tokens, n=2) needs 2 blocks plus a spare for its fork's copy.
    sched = make_scheduler(block_size=4, num_blocks=4, max_model_len=16)
    b = make_request("b", 12, max_tokens=2)  # 3 blocks, 1 left
    a = make_forking("a", 5, n=2, max_tokens=1)
    sched.add(b)
    sched.add(a)
    out, update = fork_step(sched)
    assert [s.request_id for s in out.scheduled] == ["b"]  # a waits: no spare block
    assert list(sched.waiting) == [a] and update.forked == []
    out, update = fork_step(sched)
    assert b.is_finished and [s.request_id for s in out.scheduled] == ["b"]

    # Regression: a later request in the same step must not take the spare block.
    c = make_request("c", 8)
    sched.add(c)
    out = sched.schedule()
    assert [s.request_id for s in out.scheduled] == ["a"]  # 2 blocks + 1 spare: c (2 blocks) waits
    assert sched.block_manager.num_free_blocks == 2
    update = sched.update(out, {"a": [1, 2]})
    assert len(update.block_copies) == 1 and [r.request_id for r in update.finished] == ["a", "a#1"]
    assert sched.block_manager.num_used_blocks == 0


def test_running_parent_whose_last_chunk_has_no_spare_block_is_preempted_by_the_normal_rule():
    sched = make_scheduler(max_num_batched_tokens=8, block_size=4, num_blocks=5, max_model_len=20)
    b = make_request("b", 4, max_tokens=3)
    a = make_forking("a", 10, n=2, max_tokens=1)
    sched.add(b)
    sched.add(a)
    out, _ = fork_step(sched)
    assert [(s.request_id, s.num_tokens, s.num_samples) for s in out.scheduled] == [("b", 4, 1), ("a", 4, 0)]
    # b grows into a second block; a's last chunk needs 2 more blocks and a spare: 3 > 2 free.
    # a is the newest running request, so it preempts itself.
    out, update = fork_step(sched)
    assert out.preempted_ids == ["a"] and [s.request_id for s in out.scheduled] == ["b"]
    assert a.status is RequestStatus.PREEMPTED and update.forked == []
    for _ in range(10):
        out, update = fork_step(sched)
        if update.forked:
            break
    assert [c.request_id for c in update.forked] == ["a#1"] and by_id(out)["a"].num_samples == 2
    assert not sched.has_unfinished() and sched.block_manager.num_used_blocks == 0


def test_parent_finished_before_its_fork_leaves_no_children():
    sched = make_scheduler(block_size=4)
    a = make_forking("a", 6, n=3)
    sched.add(a)
    out = sched.schedule()
    assert out.scheduled[0].num_samples == 3
    assert sched.abort("a") is a  # in flight: the engine sampled 3 tokens anyway
    update = sched.update(out, {"a": [1, 2, 3]})
    assert update.forked == [] and update.block_copies == [] and update.finished == []
    assert not sched.has_unfinished() and sched.block_manager.num_used_blocks == 0
    assert "a#1" not in sched.requests
    # Waiting: aborted before it ever ran; its fork ids are free again.
    b = make_forking("b", 6, n=2)
    sched.add(b)
    assert sched.abort("b") is b
    sched.add(make_request("b#1", 3))
    assert set(sched.requests) == {"b#1"}


def test_forked_child_preempted_later_is_recomputed_from_prompt_and_its_own_outputs():
    # 7 blocks of 4: an 8-token prompt (2 blocks, shared) forks into 3; each grows a private
    # third block, then a fourth at 13 tokens, when the pool runs out and the newest child goes.
    sched = make_scheduler(block_size=4, num_blocks=7, max_model_len=16)
    a = make_forking("a", 8, n=3, max_tokens=8)
    sched.add(a)
    tokens = {"a": [1], "a#1": [2], "a#2": [3]}
    _, update = fork_step(sched, {"a": [1, 2, 3]})
    c2 = update.forked[1]
    shared = sched.block_manager.block_table("a")[:2]
    for _ in range(10):
        out, _ = fork_step(sched, tokens)
        if out.preempted_ids:
            break
    assert out.preempted_ids == ["a#2"]
    assert c2.status is RequestStatus.PREEMPTED and sched.block_manager.block_table("a#2") == []
    assert [sched.block_manager.pool.blocks[b].ref_count for b in shared] == [2, 2]
    assert c2.output_token_ids == [3] * 5
    history = c2.prompt_token_ids + c2.output_token_ids

    while "a#2" not in by_id(out):
        out, _ = fork_step(sched, tokens)
    assert a.is_finished  # the preempted child came back once the others made room
    item = by_id(out)["a#2"]
    assert (item.start_pos, item.token_ids, item.num_samples) == (0, history, 1)
    assert c2.output_token_ids == [3] * 6
    while sched.has_unfinished():
        fork_step(sched, tokens)
    assert c2.finish_reason is FinishReason.LENGTH and c2.output_token_ids == [3] * 8
    assert sched.block_manager.num_used_blocks == 0


def test_add_rejects_forks_that_could_never_run_or_reuse_ids():
    sched = make_scheduler(max_num_seqs=3, block_size=4, num_blocks=4, max_model_len=16)
    with pytest.raises(ValueError, match="max_num_seqs=3"):
        sched.add(make_forking("a", 4, n=4))
    # 13 tokens: 4 blocks, plus 1 spare for the fork's copy of the partial block, in a pool of 4.
    with pytest.raises(ValueError, match="num_blocks=4"):
        sched.add(make_forking("a", 13, n=2))
    sched.add(make_forking("a", 12, n=3))  # block-aligned: the forks need no spare block
    with pytest.raises(ValueError, match="'a#1'"):
        sched.add(make_request("a#1", 3))  # the fork id of a request that has not forked yet
    with pytest.raises(ValueError, match="'a#2'"):
        sched.add(Request("z", [1], StopConditions(max_tokens=1), fork_ids=["a#2"]))
    with pytest.raises(ValueError):
        sched.add(Request("y", [1], StopConditions(max_tokens=1), fork_ids=["y#1", "y#1"]))
    assert set(sched.requests) == {"a"} and list(sched.waiting) == [sched.requests["a"]]


# --------------------------------------------------------------------------- (k) prefix caching


def cached_scheduler(**kwargs) -> Scheduler:
    return make_scheduler(enable_prefix_caching=True, **kwargs)


def test_same_three_block_prompt_reuses_two_blocks_and_is_scheduled_from_there():
    sched = cached_scheduler(block_size=4)
    bm = sched.block_manager
    a = make_request("a", 12)
    sched.add(a)
    out, _ = step(sched)
    assert a.num_cached_tokens == 0 and out.scheduled[0].start_pos == 0
    a_table = bm.block_table("a")
    assert bm.pool.num_cached_blocks == 3  # 12 tokens computed: all three blocks are full

    b = make_request("b", 12)  # the same prompt
    sched.add(b)
    out, _ = step(sched)
    item = by_id(out)["b"]
    # Two of the three blocks come from the cache; the last is recomputed for its logits.
    assert b.num_cached_tokens == 8
    assert (item.start_pos, item.token_ids, item.num_samples) == (8, b.prompt_token_ids[8:], 1)
    assert item.block_tables[0][:2] == a_table[:2] and item.block_tables[0][2] not in a_table
    assert [bm.pool.blocks[i].ref_count for i in a_table] == [2, 2, 1]  # a still runs: shared
    assert b.num_computed_tokens == 12 and b.output_token_ids == [1]


@pytest.mark.parametrize("prompt_len", [1, 3, 4, 5, 8, 9, 11, 13, 16])
def test_cached_tokens_are_the_full_blocks_before_the_last_prompt_token(prompt_len):
    sched = cached_scheduler(block_size=4)
    sched.add(make_request("a", prompt_len, max_tokens=1))
    step(sched)  # a finishes: its computed full blocks stay cached, free
    b = make_request("b", prompt_len)
    sched.add(b)
    out, _ = step(sched)
    expected = (prompt_len - 1) // 4 * 4
    assert b.num_cached_tokens == expected
    assert out.scheduled[0].start_pos == expected
    assert out.scheduled[0].token_ids == b.prompt_token_ids[expected:]
    assert sched.prefix_cache_hits == expected


def test_freed_request_blocks_stay_cached_and_are_revived():
    sched = cached_scheduler(block_size=4, num_blocks=16)
    bm, pool = sched.block_manager, sched.block_manager.pool
    a = make_request("a", 10, max_tokens=1)
    sched.add(a)
    out, finished = step(sched)
    assert finished == [a]
    a_table = out.scheduled[0].block_tables[0]  # 2 full blocks and a partial one
    assert bm.num_used_blocks == 0 and bm.num_free_blocks == 16
    assert pool.num_cached_blocks == 2
    for index, block_id in enumerate(a_table[:2]):
        block = pool.blocks[block_id]
        assert block.ref_count == 0 and pool.is_free(block)
        assert block.token_ids == tuple(a.prompt_token_ids[index * 4 : index * 4 + 4])
    assert pool.blocks[a_table[2]].block_hash is None  # partial: never cached

    b = make_request("b", 10)
    sched.add(b)
    out = sched.schedule()
    (item,) = out.scheduled
    assert (item.start_pos, item.token_ids) == (8, b.prompt_token_ids[8:])
    assert item.block_tables[0][:2] == a_table[:2]
    for block_id in a_table[:2]:  # revived: one holder, out of the free queue
        assert pool.blocks[block_id].ref_count == 1 and not pool.is_free(pool.blocks[block_id])
    assert bm.num_free_blocks == 16 - 3 and pool.num_evictions == 0
    bm.check_invariants()


def test_block_pool_evicts_least_recently_freed_cached_block_and_spares_revived_ones():
    pool = BlockPool(4)
    blocks = pool.allocate(4)
    hashes = []
    for i, block in enumerate(blocks):
        hashes.append(hash_block(None, (i, i)))
        pool.cache(block, hashes[i], None, (i, i))
    for i in (2, 0, 3, 1):
        pool.free([blocks[i]])
    assert pool.num_cached_blocks == 4 and pool.num_free_blocks == 4

    revived = pool.take_cached(hashes[2], (2, 2))  # the least recently freed one
    assert revived is blocks[2] and revived.ref_count == 1 and not pool.is_free(revived)
    (taken,) = pool.allocate(1)
    assert taken is blocks[0]  # the least recently freed of those still free: evicted
    assert taken.block_hash is None and taken.token_ids is None
    assert pool.take_cached(hashes[0], (0, 0)) is None
    assert pool.num_evictions == 1 and pool.num_cached_blocks == 3
    assert pool.take_cached(hashes[3], (3, 3)) is blocks[3]
    (taken,) = pool.allocate(1)
    assert taken is blocks[1] and pool.num_evictions == 2
    assert blocks[2].block_hash == hashes[2] and blocks[3].block_hash == hashes[3]  # held: kept
    with pytest.raises(RuntimeError):
        pool.allocate(1)
    pool.check_cache()


def test_scheduler_evicts_the_earlier_finished_requests_blocks_first():
    sched = cached_scheduler(block_size=4, num_blocks=8, max_model_len=32)
    pool = sched.block_manager.pool
    a = make_request("a", 9, max_tokens=1, first_token=100)
    b = make_request("b", 9, max_tokens=1, first_token=200)
    tables = {}
    for r in (a, b):  # one after the other: a's blocks are freed first
        sched.add(r)
        out, finished = step(sched)
        assert finished == [r]
        tables[r.request_id] = out.scheduled[0].block_tables[0]
    assert pool.num_cached_blocks == 4
    content = {rid: [(pool.blocks[i].block_hash, pool.blocks[i].token_ids) for i in tables[rid][:2]] for rid in "ab"}

    sched.add(make_request("c", 20, max_tokens=1, first_token=300))  # 5 blocks: 2 never used, then a's 3
    out, _ = step(sched)
    assert out.scheduled[0].block_tables[0] == [6, 7, *tables["a"][::-1]]
    assert pool.num_evictions == 2  # a's two cached blocks (its third one was partial)
    cached_now = {(b.block_hash, b.token_ids) for b in pool.blocks if b.block_hash is not None}
    assert not set(content["a"]) & cached_now
    assert set(content["b"]) <= cached_now

    d = make_request("d", 9, first_token=200)  # b's prompt: still cached
    sched.add(d)
    out, _ = step(sched)
    assert d.num_cached_tokens == 8 and by_id(out)["d"].block_tables[0][:2] == tables["b"][:2]


def test_block_whose_hash_matches_but_tokens_differ_is_not_used():
    pool = BlockPool(2)
    (block,) = pool.allocate(1)
    claimed = (1, 2, 3, 4)
    # As if (5, 6, 7, 8) collided with (1, 2, 3, 4): cached under the other tokens' hash.
    pool.cache(block, hash_block(None, claimed), None, (5, 6, 7, 8))
    pool.free([block])
    assert pool.take_cached(hash_block(None, claimed), claimed) is None
    assert block.ref_count == 0 and pool.is_free(block)  # not revived either
    with pytest.raises(AssertionError, match="hash does not match"):
        pool.check_cache()

    # Through the block manager: a request starting with (1, 2, 3, 4) finds nothing.
    bm = BlockManager(num_blocks=4, block_size=4, enable_caching=True)
    (block,) = bm.pool.allocate(1)
    bm.pool.cache(block, hash_block(None, claimed), None, (5, 6, 7, 8))
    bm.pool.free([block])
    tokens = list(range(1, 10))
    assert bm.take_cached_prefix("r", 9, lambda start, count: tokens[start : start + count]) == 0
    assert bm.block_table("r") == [] and block.ref_count == 0


def test_caching_off_never_hits():
    sched = make_scheduler(block_size=4, enable_prefix_caching=False)
    for rid in ("a", "b", "c"):
        request = make_request(rid, 12, max_tokens=1 if rid == "a" else 100)
        sched.add(request)
        out, _ = step(sched)
        assert by_id(out)[rid].start_pos == 0 and by_id(out)[rid].token_ids == request.prompt_token_ids
        assert request.num_cached_tokens == 0
    assert sched.prefix_cache_hits == 0
    pool = sched.block_manager.pool
    assert pool.num_cached_blocks == 0 and pool.num_evictions == 0
    assert all(b.block_hash is None for b in pool.blocks)


def test_preempted_request_hits_its_own_cached_blocks_when_rescheduled():
    sched = cached_scheduler(block_size=4, num_blocks=5, max_model_len=20)
    bm = sched.block_manager
    a = make_request("a", 10, max_tokens=2, first_token=10)
    c = make_request("c", 8, first_token=20)
    sched.add(a)
    sched.add(c)
    out, _ = step(sched, token={"a": 1, "c": 3})  # a: 3 blocks, c: 2 (both full, cached)
    assert bm.num_free_blocks == 0
    c_table = bm.block_table("c")

    out, finished = step(sched, token={"a": 1})  # c needs a third block: the newest, it goes
    assert out.preempted_ids == ["c"] and finished == [a]
    assert c.status is RequestStatus.PREEMPTED and bm.block_table("c") == []
    assert all(bm.pool.blocks[i].block_hash is not None for i in c_table)

    out, _ = step(sched, token={"c": 4})
    item = by_id(out)["c"]
    # Only the generated token is recomputed: the prompt's K/V are its own cached blocks.
    assert (item.start_pos, item.token_ids, item.num_samples) == (8, [3], 1)
    assert item.block_tables[0][:2] == c_table
    assert c.num_cached_tokens == 0  # first admission found nothing; set once
    assert c.output_token_ids == [3, 4] and c.num_preemptions == 1
    assert (sched.prefix_cache_queries, sched.prefix_cache_hits) == (10 + 8 + 9, 8)


def test_admission_that_fails_after_a_hit_gives_the_blocks_back_and_retries():
    sched = cached_scheduler(block_size=4, num_blocks=4, max_model_len=16)
    bm, pool = sched.block_manager, sched.block_manager.pool
    a = make_request("a", 8, max_tokens=1, first_token=100)
    b = make_request("b", 7, first_token=200)
    sched.add(a)
    sched.add(b)
    out, finished = step(sched)
    assert finished == [a]
    a_table = by_id(out)["a"].block_tables[0]  # free, cached
    c = Request("c", a.prompt_token_ids + list(range(300, 308)), StopConditions(max_tokens=5))
    sched.add(c)

    out, _ = step(sched)  # c finds 8 tokens but needs 2 more blocks with none free
    assert [s.request_id for s in out.scheduled] == ["b"]
    assert list(sched.waiting) == [c] and bm.block_table("c") == []
    assert c.num_computed_tokens == 0 and c.num_cached_tokens is None
    assert all(pool.blocks[i].ref_count == 0 and pool.blocks[i].block_hash is not None for i in a_table)
    assert (sched.prefix_cache_queries, sched.prefix_cache_hits) == (8 + 7, 0)

    sched.abort("b")
    out, _ = step(sched)
    item = by_id(out)["c"]
    assert (item.start_pos, item.token_ids) == (8, c.prompt_token_ids[8:])
    assert item.block_tables[0][:2] == a_table and c.num_cached_tokens == 8
    assert (sched.prefix_cache_queries, sched.prefix_cache_hits) == (8 + 7 + 16, 8)


def test_prefix_cache_counters_add_up_admitted_tokens_and_hits():
    sched = cached_scheduler(block_size=4)
    assert (sched.prefix_cache_queries, sched.prefix_cache_hits) == (0, 0)
    sched.add(make_request("a", 12, first_token=100))
    step(sched)
    assert (sched.prefix_cache_queries, sched.prefix_cache_hits) == (12, 0)
    sched.add(make_request("b", 12, first_token=100))  # same prompt: 8 found
    sched.add(make_request("c", 6, first_token=100))  # its first 4 tokens: 4 found
    sched.add(make_request("d", 6, first_token=500))  # nothing in common
    step(sched)
    assert (sched.prefix_cache_queries, sched.prefix_cache_hits) == (12 + 12 + 6 + 6, 8 + 4)
    assert [sched.requests[r].num_cached_tokens for r in "abcd"] == [0, 8, 4, 0]
    step(sched)  # running requests are not looked up again
    assert (sched.prefix_cache_queries, sched.prefix_cache_hits) == (36, 12)


def test_can_allocate_predicts_allocate_slots():
    bm = BlockManager(num_blocks=3, block_size=4)
    assert bm.can_allocate("a", 12) and not bm.can_allocate("a", 13)
    assert bm.allocate_slots("a", 5)  # 2 blocks
    assert bm.can_allocate("a", 8) and bm.can_allocate("b", 4) and not bm.can_allocate("b", 5)
    assert not bm.allocate_slots("b", 5) and bm.block_table("b") == []
