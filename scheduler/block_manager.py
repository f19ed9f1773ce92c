"""Per-request block tables over the ``BlockPool``: the only owner of which blocks a request holds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from .block_pool import BlockPool, KVBlock
from .prefix_hash import hash_block

# (start, count) -> that slice of a request's tokens (prompt then output)
TokenSource = Callable[[int, int], list[int]]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def first_needed_block(position: int, window: int, block_size: int) -> int:
    """The first block a token at ``position`` sees through a ``window`` (its own position included)."""
    return max(0, (position + 1 - window) // block_size)


class BlockManager:
    """Block tables keyed by request id: per request, one table per KV cache group.

    A group is a set of layers that read one block table (scheduler/kv_groups.py). A model whose
    layers all attend to the whole context has one group; a model with sliding-window layers also
    has groups of those, and every group draws from the one pool. Entry ``i`` of a table is the
    block holding positions ``i * block_size ..`` for that group's layers. In a sliding-window group,
    a block whose every position lies before the window of the next token to compute is given back
    (``free_outside_window``) and its entry becomes a hole (None), so such a group holds about
    window / block_size + 1 blocks per sequence, plus the prefill chunk in flight, however long
    the context grows. What this tracks: each request's tables with their holes, the chain hashes of
    its full blocks (shared by every group), and, through the pool, who holds each block.

    ``allocate_slots`` grows the tables to cover a number of tokens, atomically: either every
    block it needs is taken, or nothing changes and it returns False (the scheduler then
    preempts or waits).

    With prefix caching, ``take_cached_prefix`` starts the tables with the cached blocks of a
    request's leading tokens (in a sliding group, only those inside the window), and
    ``cache_full_blocks`` registers each block once it is full and computed, under a hash chained
    over the request's blocks so far and under its group.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = False,
                 group_windows: Sequence[int] = (0,)) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.group_windows = tuple(group_windows)  # per KV cache group: its sliding window, 0 for full attention
        self.pool = BlockPool(num_blocks)
        self._tables: dict[str, list[list[KVBlock | None]]] = {}
        self._hashes: dict[str, list[bytes]] = {}  # chain hashes of a request's blocks registered so far

    @property
    def num_groups(self) -> int:
        return len(self.group_windows)

    @property
    def num_total_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_used_blocks(self) -> int:
        return self.pool.num_blocks - self.pool.num_free_blocks

    def num_new_blocks(self, request_id: str, num_tokens: int) -> int:
        """Blocks to add so that the request's tables cover ``num_tokens`` tokens."""
        tables = self._tables.get(request_id)
        held = len(tables[0]) if tables else 0
        return max(0, cdiv(num_tokens, self.block_size) - held) * self.num_groups

    def can_allocate(self, request_id: str, num_tokens: int) -> bool:
        """Whether ``allocate_slots(request_id, num_tokens)`` would succeed now."""
        return self.num_new_blocks(request_id, num_tokens) <= self.pool.num_free_blocks

    def allocate_slots(self, request_id: str, num_tokens: int, num_spare_blocks: int = 0) -> bool:
        """Grow the tables to cover ``num_tokens``, only if ``num_spare_blocks`` more stay free after.

        The spare blocks are for forks decided when the step's tokens come back (``fork``).
        """
        needed = self.num_new_blocks(request_id, num_tokens)
        if needed + num_spare_blocks > self.pool.num_free_blocks:
            return False
        tables = self._tables.setdefault(request_id, [[] for _ in self.group_windows])
        if needed:
            blocks = self.pool.allocate(needed)
            step = needed // self.num_groups
            for index, table in enumerate(tables):
                table.extend(blocks[index * step : (index + 1) * step])
        return True

    def free_outside_window(self, request_id: str, num_computed_tokens: int) -> None:
        """Give back the sliding-window groups' blocks that no token from ``num_computed_tokens`` on can
        see: the next token, at that position, sees the last ``window`` positions, its own included."""
        tables = self._tables.get(request_id)
        if not tables:
            return
        for window, table in zip(self.group_windows, tables):
            if window:
                self._free_blocks(table, first_needed_block(num_computed_tokens, window, self.block_size))

    def take_cached_prefix(self, request_id: str, num_tokens: int, tokens: TokenSource) -> int:
        """Start the tables of a request that holds no blocks with its longest cached prefix.

        A prefix counts when every full-attention group has all its blocks cached and every
        sliding group those inside the window of the first token left to compute. At least one
        token is left to compute (its logits give the next token). Returns the number of tokens
        whose K/V are now in the tables.
        """
        if not self.enable_caching or self._tables.get(request_id, [[]])[0]:
            return 0
        size, pool = self.block_size, self.pool
        full = [g for g, window in enumerate(self.group_windows) if not window]
        hashes: list[bytes] = []
        token_ids: list[tuple[int, ...]] = []
        parent = None
        for index in range((num_tokens - 1) // size):
            ids = tuple(tokens(index * size, size))
            block_hash = hash_block(parent, ids)
            if any(pool.find_cached(block_hash, ids, g) is None for g in full):
                break
            hashes.append(block_hash)
            token_ids.append(ids)
            parent = block_hash

        def window_cached(num_blocks: int) -> bool:
            return all(pool.find_cached(hashes[i], token_ids[i], g) is not None
                       for g, window in enumerate(self.group_windows) if window
                       for i in range(first_needed_block(num_blocks * size, window, size), num_blocks))

        num_blocks = len(hashes)
        while num_blocks and not window_cached(num_blocks):
            num_blocks -= 1
        tables = []
        for group, window in enumerate(self.group_windows):
            first = first_needed_block(num_blocks * size, window, size) if window else 0
            tables.append([None] * first + [pool.take_cached(hashes[i], token_ids[i], group)
                                            for i in range(first, num_blocks)])
        self._tables[request_id] = tables
        self._hashes[request_id] = hashes[:num_blocks]
        return num_blocks * size

    def cache_full_blocks(self, request_id: str, num_computed_tokens: int, tokens: TokenSource) -> None:
        """Register the request's blocks that became full and computed since the last call."""
        if not self.enable_caching:
            return
        tables = self._tables[request_id]
        hashes = self._hashes.setdefault(request_id, [])
        size = self.block_size
        for index in range(len(hashes), min(num_computed_tokens // size, len(tables[0]))):
            parent = hashes[-1] if hashes else None
            token_ids = tuple(tokens(index * size, size))
            block_hash = hash_block(parent, token_ids)
            for group, table in enumerate(tables):
                if table[index] is not None:
                    self.pool.cache(table[index], block_hash, parent, token_ids, group)
            hashes.append(block_hash)

    def fork(self, parent_id: str, child_id: str, num_tokens: int) -> list[tuple[int, int]]:
        """Give ``child_id`` the parent's first ``num_tokens`` tokens of KV.

        Full blocks are shared by reference count. A partial last block cannot be: both
        sequences write their next token into it, so in each group the child gets a fresh block,
        and the (source, destination) pairs are returned for the engine to copy the K/V (copy on
        write, done eagerly because the write is one step away).
        """
        num_full = num_tokens // self.block_size
        partial = num_full * self.block_size != num_tokens
        child_tables, copies = [], []
        for parent in self._tables[parent_id]:
            shared = parent[:num_full]
            self.pool.share([block for block in shared if block is not None])
            child_tables.append(list(shared))
            if partial:
                (private,) = self.pool.allocate(1)
                child_tables[-1].append(private)
                copies.append((parent[num_full].block_id, private.block_id))
        self._tables[child_id] = child_tables
        self._hashes[child_id] = self._hashes.get(parent_id, [])[:num_full]
        return copies

    def free(self, request_id: str) -> None:
        """Give back every block the request holds (no-op for a request holding none)."""
        tables = self._tables.pop(request_id, None)
        self._hashes.pop(request_id, None)
        for table in tables or ():
            self._free_blocks(table, len(table))

    def _free_blocks(self, table: list[KVBlock | None], end: int) -> None:
        """Give back the blocks of ``table[:end]``, tail first, leaving holes."""
        held = [block for block in table[:end] if block is not None]
        if held:
            self.pool.free(held[::-1])
            table[:end] = [None] * end

    def block_table(self, request_id: str, group: int = 0) -> list[int]:
        """The block ids of one group's table. A hole reads as the first block still held, one
        whose slots are all written: kernels never look at positions outside the window, but a
        reference gather may, and it must find finite values there."""
        tables = self._tables.get(request_id)
        if not tables:
            return []
        table = tables[group]
        oldest = next((block.block_id for block in table if block is not None), None)
        return [oldest if block is None else block.block_id for block in table]

    def block_tables(self, request_id: str) -> tuple[list[int], ...]:
        """Every group's table, in group order."""
        return tuple(self.block_table(request_id, group) for group in range(self.num_groups))

    def num_held_blocks(self, request_id: str, group: int = 0) -> int:
        """Blocks the request holds in one group (holes not counted)."""
        return sum(block is not None for block in self._tables.get(request_id, [[]] * self.num_groups)[group])

    def holders(self) -> list[str]:
        return list(self._tables)

    def check_invariants(self) -> None:
        """Raise AssertionError if blocks leaked, are double-owned, or counts disagree."""
        refs = Counter(block.block_id for tables in self._tables.values() for table in tables
                       for block in table if block is not None)
        for block in self.pool.blocks:
            assert block.ref_count == refs.get(block.block_id, 0), (
                f"block {block.block_id}: ref_count {block.ref_count} but held by "
                f"{refs.get(block.block_id, 0)} tables"
            )
            assert self.pool.is_free(block) == (block.ref_count == 0), (
                f"block {block.block_id}: ref_count {block.ref_count}, in free queue: {self.pool.is_free(block)}"
            )
        for request_id, tables in self._tables.items():
            assert len(tables) == self.num_groups, f"{request_id} has {len(tables)} tables"
            assert len({len(table) for table in tables}) == 1, f"{request_id}: its tables differ in length"
            held = [b.block_id for table in tables for b in table if b is not None]
            assert len(set(held)) == len(held), f"{request_id} holds a block twice"
            hashes = self._hashes.get(request_id, [])
            assert len(hashes) <= len(tables[0]), f"{request_id} has hashes for blocks it does not hold"
            for group, (window, table) in enumerate(zip(self.group_windows, tables)):
                assert window or None not in table, f"{request_id}: a hole in full-attention group {group}"
                # A block is cached under its chain's hash, or not at all (another block had that content first).
                for block, block_hash in zip(table, hashes):
                    assert block is None or block.block_hash in (None, block_hash), (
                        f"{request_id}: block {block.block_id} mis-hashed")
        self.pool.check_cache()
        assert self.num_free_blocks + self.num_used_blocks == self.num_total_blocks
        assert self.num_used_blocks == len(refs)
