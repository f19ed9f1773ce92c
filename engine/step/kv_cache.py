"""The paged K/V cache tensors, shared by the KV cache groups' layers, sized from a memory budget or a block count."""

from __future__ import annotations

import torch

from engine.config import DEFAULT_CPU_KV_CACHE_GB
from engine.model.architectures.decoder import LayerKV
from engine.scheduler import KVCacheGroups


def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def num_blocks_for_memory(memory_gb: float | None, block_bytes: int, device: torch.device,
                          gpu_memory_utilization: float = 0.9, activation_bytes: int = 0) -> int:
    """On CPU: ``kv_cache_memory_gb`` (default a few GiB).

    On CUDA without an explicit size: what is left of ``gpu_memory_utilization`` of the card
    once the weights are loaded, minus the step's activations (``activation_bytes``).
    """
    if memory_gb is None and device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = total * gpu_memory_utilization - (total - free) - activation_bytes
        return max(0, int(budget)) // block_bytes
    budget = (memory_gb if memory_gb is not None else DEFAULT_CPU_KV_CACHE_GB) * 2**30
    return int(budget) // block_bytes


class KVCache:
    """The pool's ``group_size`` per-layer ``(k_cache, v_cache)`` pairs, each shaped
    ``[num_blocks, block_size, num_kv_heads, head_dim]``, and each model layer's view of them.

    Layer slot j of every KV cache group (scheduler/kv_groups.py) uses pair j: a block belongs to
    one group at a time, so the groups' tables never point two layers at the same slot. Allocated
    with ``torch.empty``: slots are written by ``store_kv`` before any read, and the attention ops
    never read past a sequence's length.
    """

    def __init__(self, groups: KVCacheGroups, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.tensors = [
            (torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
            for _ in range(groups.group_size)
        ]
        self.layers: list[LayerKV] = [(*self.tensors[slot], group)
                                      for group, slot in zip(groups.layer_group, groups.layer_slot)]
        self.num_blocks = num_blocks
        self.block_size = block_size
