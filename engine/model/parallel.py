"""Tensor parallelism over torch.distributed: which share of each layer a rank holds, and the two
collectives the sharded model needs.

Attention is split by KV heads (each rank takes whole GQA groups: its KV heads and the query heads
that read them), as evenly as the heads allow, so a model with 3 KV heads runs on 2 ranks (2 + 1);
the MLP's intermediate size and the vocabulary are split in equal contiguous ranges. Column-parallel
layers (q/k/v, gate/up, the embedding and lm_head rows) need no communication; the row-parallel
ones (o_proj, down_proj) and the embedding end with an all-reduce, and lm_head with an all-gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

VOCAB_UNIT = 64  # vocabulary shards are padded to a multiple of this many rows
INTERMEDIATE_UNIT = 256  # MLP shards keep whole 256-wide groups where the size allows (low-bit groups stay whole)


@dataclass(frozen=True)
class Shard:
    """Rows ``start .. start + size`` of a dimension (in elements)."""

    start: int
    size: int

    def take(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        return tensor.narrow(dim, self.start, self.size)


@dataclass(frozen=True)
class TensorParallel:
    """This process's rank among ``size`` (size 1: no communication at all)."""

    rank: int = 0
    size: int = 1

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def kv_heads(self, num_kv_heads: int) -> Shard:
        """This rank's KV heads (in heads); the query heads follow them."""
        if num_kv_heads < self.size:
            raise ValueError(f"tensor_parallel_size={self.size} is more than the model's {num_kv_heads} KV heads")
        return _even(num_kv_heads, self.size, self.rank, unit=1)

    def intermediate(self, intermediate_size: int) -> Shard:
        unit = INTERMEDIATE_UNIT if intermediate_size % (INTERMEDIATE_UNIT * self.size) == 0 else 1
        return _even(intermediate_size, self.size, self.rank, unit)

    def vocab(self, vocab_size: int) -> Shard:
        """This rank's rows of the embedding and lm_head: equal shards, the last one padded (one rank: all rows)."""
        if not self.enabled:
            return Shard(0, vocab_size)
        per_rank = -(-vocab_size // (self.size * VOCAB_UNIT)) * VOCAB_UNIT
        return Shard(self.rank * per_rank, per_rank)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch.distributed.all_reduce(x)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """The ranks' ``x`` joined along the last dimension (every rank's ``x`` has the same shape)."""
        if not self.enabled:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-1)


def _even(total: int, parts: int, index: int, unit: int) -> Shard:
    """Part ``index`` of ``total`` cut into ``parts`` contiguous ranges of whole ``unit``s, the first ones
    one unit larger where it does not divide."""
    units, extra = divmod(total // unit, parts)
    start = index * units + min(index, extra)
    return Shard(start * unit, (units + (index < extra)) * unit)
