"""The hybrid KV cache's block tables: sliding-window groups give back the blocks behind their window.

A shadow KV cache stands in for the model: each step writes, for every group, what each of its new
positions would hold (the token ids up to it) into the group's slots, and checks that every
position a query of the step can see, in every group, reads what was written for that request's
tokens there. Prefix-cache hits, forks (n > 1, with their block copies) and preemptions in a tight
pool all go through the same check, and the block manager's invariants hold after every step.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import event, given, settings

from engine.scheduler import KVCacheGroups, Request, Scheduler, SchedulerConfig, StopConditions
from engine.scheduler.block_manager import cdiv, first_needed_block


def test_layers_are_grouped_by_window_in_groups_of_one_size():
    gemma3 = KVCacheGroups.of_layers([512] * 5 + [0] + [512] * 5 + [0] + [512] * 5 + [0], max_model_len=4096)
    assert gemma3.windows == (512,) * 5 + (0,)  # 15 sliding layers in five groups of three, 3 global in one
    assert gemma3.group_size == 3
    assert gemma3.layer_group[:6] == (0, 0, 0, 1, 1, 5) and gemma3.layer_slot[:6] == (0, 1, 2, 0, 1, 0)
    pairs = list(zip(gemma3.layer_group, gemma3.layer_slot))
    assert len(set(pairs)) == 18  # no two layers share a group's slot
    llama = KVCacheGroups.of_layers([0] * 30, max_model_len=2048)
    assert llama.windows == (0,) and llama.group_size == 30
    # a window as long as the context never drops a token: one group, no tables to spare
    assert KVCacheGroups.of_layers([4096] * 4, max_model_len=4096).windows == (0,)


def _run(scheduler: Scheduler, requests: list[Request], on_step=None, kv: dict[int, list] | None = None) -> None:
    """Step the scheduler to the end on a shadow KV cache, sampling tokens 7 to 11; ``on_step`` sees each
    step's output before its tokens come back."""
    bm = scheduler.block_manager
    bs = scheduler.config.block_size
    windows = scheduler.config.kv_group_windows
    kv = {} if kv is None else kv  # block id -> per slot: the token ids up to and including that position
    for request in requests:
        scheduler.add(request)
    for step in range(10_000):
        if not scheduler.has_unfinished():
            break
        out = scheduler.schedule()
        for item in out.scheduled:
            request = scheduler.requests[item.request_id]
            tokens = request.prompt_token_ids + request.output_token_ids
            for group, (window, table) in enumerate(zip(windows, item.block_tables)):
                first_seen = max(0, item.start_pos + 1 - window) if window else 0
                for pos in range(first_seen, item.start_pos):
                    assert kv[table[pos // bs]][pos % bs] == tuple(tokens[: pos + 1]), (
                        f"{item.request_id}: group {group} position {pos} reads other K/V")
                held = bm.num_held_blocks(item.request_id, group)
                expected = len(table) - (first_needed_block(item.start_pos, window, bs) if window else 0)
                assert held == expected, f"{item.request_id}: group {group} holds {held} blocks, expected {expected}"
                for pos in range(item.start_pos, item.seq_len):
                    kv.setdefault(table[pos // bs], [None] * bs)[pos % bs] = tuple(tokens[: pos + 1])
        if on_step is not None:
            on_step(out)
        sampled = {s.request_id: [7 + (step + i) % 5 for i in range(s.num_samples)] for s in out.scheduled if s.sample}
        update = scheduler.update(out, sampled)
        for src, dst in update.block_copies:
            kv[dst] = list(kv[src])
        bm.check_invariants()
    assert not scheduler.has_unfinished() and bm.num_used_blocks == 0


def test_a_long_sequence_holds_only_its_window_in_sliding_groups():
    """Gemma 3's shape: five sliding groups and one global group. Over a 1,000-token prompt (prefilled in
    64-token chunks) and 300 generated tokens, each sliding group holds at most the window's blocks plus
    the chunk's, while the global group holds the whole context."""
    bs, window, chunk = 16, 64, 64
    groups = (window,) * 5 + (0,)
    config = SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=chunk, block_size=bs, num_blocks=6 * 100,
                             max_model_len=1600, kv_group_windows=groups)
    scheduler = Scheduler(config)
    bm = scheduler.block_manager
    bound = cdiv(window - 1 + chunk, bs) + 1  # blocks under a chunk's queries and their windows
    peak = []

    def count(out):
        (item,) = out.scheduled
        sliding = [bm.num_held_blocks("long", g) for g in range(5)]
        assert max(sliding) <= bound, f"sliding groups hold {sliding} blocks at {item.seq_len} tokens"
        assert bm.num_held_blocks("long", 5) == cdiv(item.seq_len, bs)
        peak.append(bm.num_used_blocks)

    _run(scheduler, [Request("long", list(range(1000)), StopConditions(max_tokens=300, ignore_eos=True))], count)
    full_context = cdiv(1300, bs)
    # all six groups at full length would be 6 x 82 = 492 blocks; the window keeps it to 82 + 5 x 5
    assert max(peak) <= full_context + 5 * bound and max(peak) < 2 * full_context


@st.composite
def hybrid_configs(draw) -> SchedulerConfig:
    block_size = draw(st.sampled_from([1, 2, 4, 8]))
    windows = tuple(draw(st.lists(st.sampled_from([0, 0, 3, 5, 9, 17]), min_size=1, max_size=3)))
    max_model_len = 48
    minimum = len(windows) * cdiv(max_model_len, block_size)
    return SchedulerConfig(
        max_num_seqs=draw(st.integers(1, 5)),
        max_num_batched_tokens=draw(st.integers(4, 40)),
        block_size=block_size,
        num_blocks=minimum + draw(st.integers(0, minimum)),  # tight: preemptions
        max_model_len=max_model_len,
        enable_prefix_caching=draw(st.booleans()),
        kv_group_windows=windows,
    )


@settings(max_examples=300, deadline=None)
@given(config=hybrid_configs(), data=st.data())
def test_hybrid_tables_read_back_what_was_written(config, data):
    """Random requests sharing prefixes (prefix-cache hits), some with n > 1 (forks), in a tight pool
    (preemptions): every position in every group's window reads back its own request's K/V."""
    prefix = data.draw(st.lists(st.integers(0, 3), min_size=0, max_size=24), label="shared prefix")
    requests = []
    for index in range(data.draw(st.integers(1, 6), label="requests")):
        suffix = data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=12), label=f"suffix {index}")
        prompt = (prefix + suffix)[: config.max_model_len - 8]
        forks = data.draw(st.integers(0, 2), label=f"forks {index}") if config.max_num_seqs >= 3 else 0
        requests.append(Request(f"r{index}", prompt, StopConditions(max_tokens=data.draw(st.integers(1, 8))),
                                fork_ids=[f"r{index}#{f}" for f in range(forks)]))
    scheduler, kv = Scheduler(config), {}
    _run(scheduler, requests, kv=kv)
    again = [Request(f"again {r.request_id}", r.prompt_token_ids, r.stop) for r in requests]
    _run(scheduler, again, kv=kv)  # every prompt's blocks were cached: hits, where the windows' blocks survived
    sliding = any(config.kv_group_windows)
    event(f"sliding groups: {sliding}, prefix hits: {scheduler.prefix_cache_hits > 0}, "
          f"preemptions: {scheduler.num_preemptions > 0}")
