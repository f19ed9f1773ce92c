"""Per-request block tables over the ``BlockPool``: the only owner of which blocks a request holds."""

from __future__ import annotations

from collections import Counter
from typing import Callable

from .block_pool import BlockPool, KVBlock
from .prefix_hash import hash_block

# (start, count) -> that slice of a request's tokens (prompt then output)
TokenSource = Callable[[int, int], list[int]]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    """Block tables keyed by request id.

    ``allocate_slots`` grows a table to cover a number of tokens, atomically: either every
    block it needs is taken, or nothing changes and it returns False (the scheduler then
    preempts or waits).

    With prefix caching, ``take_cached_prefix`` starts a table with the cached blocks of a
    request's leading tokens, and ``cache_full_blocks`` registers each block once it is full
    and computed, under a hash chained over the request's blocks so far.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = False) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks)
        self._tables: dict[str, list[KVBlock]] = {}
        self._hashes: dict[str, list[bytes]] = {}  # chain hashes of a request's blocks registered so far

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
        """Blocks to add so that the request's table covers ``num_tokens`` tokens."""
        held = len(self._tables.get(request_id, ()))
        return max(0, cdiv(num_tokens, self.block_size) - held)

    def can_allocate(self, request_id: str, num_tokens: int) -> bool:
        """Whether ``allocate_slots(request_id, num_tokens)`` would succeed now."""
        return self.num_new_blocks(request_id, num_tokens) <= self.pool.num_free_blocks

    def allocate_slots(self, request_id: str, num_tokens: int, num_spare_blocks: int = 0) -> bool:
        """Grow the table to cover ``num_tokens``, only if ``num_spare_blocks`` more stay free after.

        The spare blocks are for forks decided when the step's tokens come back (``fork``).
        """
        needed = self.num_new_blocks(request_id, num_tokens)
        if needed + num_spare_blocks > self.pool.num_free_blocks:
            return False
        table = self._tables.setdefault(request_id, [])
        if needed:
            table.extend(self.pool.allocate(needed))
        return True

    def take_cached_prefix(self, request_id: str, num_tokens: int, tokens: TokenSource) -> int:
        """Start the table of a request that holds no blocks with its longest cached prefix.

        At least one token is left to compute (its logits give the next token). Returns the
        number of tokens whose K/V are now in the table.
        """
        if not self.enable_caching or self._tables.get(request_id):
            return 0
        size = self.block_size
        table, hashes, parent = [], [], None
        for index in range((num_tokens - 1) // size):
            token_ids = tuple(tokens(index * size, size))
            block_hash = hash_block(parent, token_ids)
            block = self.pool.take_cached(block_hash, token_ids)
            if block is None:
                break
            table.append(block)
            hashes.append(block_hash)
            parent = block_hash
        self._tables[request_id] = table
        self._hashes[request_id] = hashes
        return len(table) * size

    def cache_full_blocks(self, request_id: str, num_computed_tokens: int, tokens: TokenSource) -> None:
        """Register the request's blocks that became full and computed since the last call."""
        if not self.enable_caching:
            return
        table = self._tables[request_id]
        hashes = self._hashes.setdefault(request_id, [])
        size = self.block_size
        for index in range(len(hashes), min(num_computed_tokens // size, len(table))):
            parent = hashes[-1] if hashes else None
            token_ids = tuple(tokens(index * size, size))
            block_hash = hash_block(parent, token_ids)
            self.pool.cache(table[index], block_hash, parent, token_ids)
            hashes.append(block_hash)

    def fork(self, parent_id: str, child_id: str, num_tokens: int) -> tuple[int, int] | None:
        """Give ``child_id`` the parent's first ``num_tokens`` tokens of KV.

        Full blocks are shared by reference count. A partial last block cannot be: both
        sequences write their next token into it, so the child gets a fresh block, and the
        (source, destination) pair is returned for the engine to copy the K/V (copy on write,
        done eagerly because the write is one step away).
        """
        parent = self._tables[parent_id]
        num_full = num_tokens // self.block_size
        shared = parent[:num_full]
        self.pool.share(shared)
        table = self._tables[child_id] = list(shared)
        self._hashes[child_id] = self._hashes.get(parent_id, [])[:num_full]
        if num_full * self.block_size == num_tokens:
            return None
        (private,) = self.pool.allocate(1)
        table.append(private)
        return parent[num_full].block_id, private.block_id

    def free(self, request_id: str) -> None:
        """Give back every block the request holds (no-op for a request holding none)."""
        table = self._tables.pop(request_id, None)
        self._hashes.pop(request_id, None)
        if table:
            self.pool.free(table[::-1])

    def block_table(self, request_id: str) -> list[int]:
        return [block.block_id for block in self._tables.get(request_id, ())]

    def holders(self) -> list[str]:
        return list(self._tables)

    def check_invariants(self) -> None:
        """Raise AssertionError if blocks leaked, are double-owned, or counts disagree."""
        refs = Counter(block.block_id for table in self._tables.values() for block in table)
        for block in self.pool.blocks:
            assert block.ref_count == refs.get(block.block_id, 0), (
                f"block {block.block_id}: ref_count {block.ref_count} but held by "
                f"{refs.get(block.block_id, 0)} tables"
            )
            assert self.pool.is_free(block) == (block.ref_count == 0), (
                f"block {block.block_id}: ref_count {block.ref_count}, in free queue: {self.pool.is_free(block)}"
            )
        for request_id, table in self._tables.items():
            assert len({b.block_id for b in table}) == len(table), f"{request_id} holds a block twice"
            hashes = self._hashes.get(request_id, [])
            assert len(hashes) <= len(table), f"{request_id} has hashes for blocks it does not hold"
            # A block is cached under its chain's hash, or not at all (another block had that content first).
            for block, block_hash in zip(table, hashes):
                assert block.block_hash in (None, block_hash), f"{request_id}: block {block.block_id} mis-hashed"
        self.pool.check_cache()
        assert self.num_free_blocks + self.num_used_blocks == self.num_total_blocks
        assert self.num_used_blocks == len(refs)
