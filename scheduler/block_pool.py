"""Physical KV blocks: reference counts and the free queue.

A free block keeps its place in an LRU-ordered queue so that the prefix cache can later
revive it in O(1) (``OrderedDict`` removal by key) and evict the least recently freed first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(eq=False)
class KVBlock:
    """One block of ``block_size`` token slots in every layer's K and V cache."""

    block_id: int
    ref_count: int = 0
    # Set once the block is full, identifying its tokens and its whole prefix (prefix caching).
    block_hash: bytes | None = None


class BlockPool:
    """Owns every ``KVBlock``; hands them out with a reference count and takes them back."""

    def __init__(self, num_blocks: int) -> None:
        self.blocks = [KVBlock(block_id) for block_id in range(num_blocks)]
        self._free: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in self.blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def allocate(self, count: int) -> list[KVBlock]:
        """Take ``count`` free blocks, least recently freed first; the caller checked there are enough."""
        if count > len(self._free):
            raise RuntimeError(f"asked for {count} blocks with {len(self._free)} free")
        taken = []
        for _ in range(count):
            _, block = self._free.popitem(last=False)
            block.ref_count = 1
            block.block_hash = None
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
