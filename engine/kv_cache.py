"""The paged K/V cache tensors of every layer, sized from a memory budget or an exact block count."""

from __future__ import annotations

import torch

from .config import DEFAULT_CPU_KV_CACHE_GB


def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def num_blocks_for_memory(memory_gb: float | None, block_bytes: int, device: torch.device) -> int:
    """On CPU: ``kv_cache_memory_gb`` (default a few GiB). On CUDA: that, or 85% of the free memory."""
    if memory_gb is None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.85) // block_bytes
    budget = (memory_gb if memory_gb is not None else DEFAULT_CPU_KV_CACHE_GB) * 2**30
    return int(budget) // block_bytes


class KVCache:
    """Per layer a ``(k_cache, v_cache)`` pair shaped ``[num_blocks, block_size, num_kv_heads, head_dim]``.

    Allocated with ``torch.empty``: slots are written by ``store_kv`` before any read, and the
    attention ops never read past a sequence's length.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.layers = [
            (torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
            for _ in range(num_layers)
        ]
        self.num_blocks = num_blocks
        self.block_size = block_size
