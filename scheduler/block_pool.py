"""Physical KV blocks: reference counts, the LRU free queue, and the prefix-cache map.

A block nobody holds goes to the back of the free queue but keeps its hash: until it is
handed out again (evicted, least recently freed first), a request with the same prefix can
revive it in O(1) (``OrderedDict`` removal by key) instead of recomputing its K/V. A block is cached
under its KV cache group too (scheduler/kv_groups.py): the same tokens' blocks of two groups hold
different layers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .prefix_hash import hash_block


@dataclass(eq=False)
class KVBlock:
    """One block of ``block_size`` token slots in every layer's K and V cache."""

    block_id: int
    ref_count: int = 0
    # Set (once) when the block is full and cached: its identity, its parent's, and its tokens,
    # which a lookup compares so that even a hash collision cannot serve wrong K/V.
    block_hash: bytes | None = None
    group: int = 0  # the KV cache group whose layers it holds, while cached
    parent_hash: bytes | None = None
    token_ids: tuple[int, ...] | None = None


class BlockPool:
    """Owns every ``KVBlock``; hands them out with a reference count and takes them back."""

    def __init__(self, num_blocks: int) -> None:
        self.blocks = [KVBlock(block_id) for block_id in range(num_blocks)]
        self._free: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[tuple[int, bytes], KVBlock] = {}
        self.num_evictions = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def allocate(self, count: int) -> list[KVBlock]:
        """Take ``count`` free blocks, least recently freed first, evicting their cached content."""
        if count > len(self._free):
            raise RuntimeError(f"asked for {count} blocks with {len(self._free)} free")
        taken = []
        for _ in range(count):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                del self._cached[block.group, block.block_hash]
                block.block_hash = block.parent_hash = block.token_ids = None
                self.num_evictions += 1
            block.ref_count = 1
            taken.append(block)
        return taken

    def share(self, blocks: list[KVBlock]) -> None:
        """One more holder for each of these blocks (they are in use, so not in the free queue)."""
        for block in blocks:
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block.block_id} is free and cannot be shared")
            block.ref_count += 1

    def free(self, blocks: list[KVBlock]) -> None:
        """Drop one reference from each block; blocks nobody holds go to the back of the free queue.

        Callers pass a table tail first, so a request's last blocks are reused before its first
        ones, which are the likelier prefix-cache hits.
        """
        for block in blocks:
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block.block_id} freed more often than taken")
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block.block_id] = block

    def is_free(self, block: KVBlock) -> bool:
        return block.block_id in self._free

    def cache(self, block: KVBlock, block_hash: bytes, parent_hash: bytes | None, token_ids: tuple[int, ...],
              group: int = 0) -> None:
        """Make a full, computed block findable. If another block already holds this content, keep that one."""
        if block.block_hash is not None or (group, block_hash) in self._cached:
            return
        block.block_hash, block.parent_hash, block.token_ids, block.group = block_hash, parent_hash, token_ids, group
        self._cached[group, block_hash] = block

    def find_cached(self, block_hash: bytes, token_ids: tuple[int, ...], group: int = 0) -> KVBlock | None:
        """The cached block of ``group`` with this content, or None; nothing changes."""
        block = self._cached.get((group, block_hash))
        return block if block is not None and block.token_ids == token_ids else None

    def take_cached(self, block_hash: bytes, token_ids: tuple[int, ...], group: int = 0) -> KVBlock | None:
        """The cached block with this content, with one more holder (revived if it was free), or None."""
        block = self.find_cached(block_hash, token_ids, group)
        if block is None:
            return None
        if block.ref_count == 0:
            del self._free[block.block_id]
        block.ref_count += 1
        return block

    def check_cache(self) -> None:
        for (group, block_hash), block in self._cached.items():
            assert (block.group, block.block_hash) == (group, block_hash), (
                f"block {block.block_id} is mapped under another hash or group")
            assert hash_block(block.parent_hash, block.token_ids) == block_hash, (
                f"block {block.block_id}: hash does not match its tokens and parent"
            )
        hashed = [b for b in self.blocks if b.block_hash is not None]
        assert len(hashed) == len(self._cached), "a block has a hash but is not in the cache map"
