"""Which layers share a block table: the hybrid KV cache of models with sliding-window layers.

A model whose layers all attend to the whole context has one group: every layer reads the same
block table, and a block holds its positions' K/V in every layer. Where some layers only see a
sliding window, their old blocks can be given back while the full-attention layers still need
theirs, so those layers need tables of their own. As in vLLM's hybrid KV cache manager, the layers
are cut into groups of one attention kind and one equal size (the greatest common divisor of the
kinds' layer counts): Gemma 3's 15 sliding and 3 global layers make five sliding groups and one
global group of three layers each. Every group draws its blocks from one pool, and a block holds
K/V for ``group_size`` layers: layer slot j of whichever group owns it. Memory per block is the
same whatever the mix, so short sequences fit as many as before and long ones fit many more.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KVCacheGroups:
    windows: tuple[int, ...]  # per group: its layers' sliding window in tokens, 0 for full attention
    layer_group: tuple[int, ...]  # per layer: the group whose block table it reads
    layer_slot: tuple[int, ...]  # per layer: which of the pool's ``group_size`` per-layer tensors it uses

    @property
    def group_size(self) -> int:
        return max(self.layer_slot) + 1

    @property
    def num_groups(self) -> int:
        return len(self.windows)

    @classmethod
    def of_layers(cls, layer_windows: Sequence[int], max_model_len: int) -> KVCacheGroups:
        """Group the layers by their window; a window no shorter than ``max_model_len`` never drops a
        token, so those layers count as full attention and need no tables of their own."""
        windows = [w if 0 < w < max_model_len else 0 for w in layer_windows]
        counts = Counter(windows)  # kinds in order of first appearance
        size = math.gcd(*counts.values())
        first_group, group_windows = {}, []
        for window, count in counts.items():
            first_group[window] = len(group_windows)
            group_windows += [window] * (count // size)
        seen: Counter[int] = Counter()
        layer_group, layer_slot = [], []
        for window in windows:
            index = seen[window]
            seen[window] += 1
            layer_group.append(first_group[window] + index // size)
            layer_slot.append(index % size)
        return cls(tuple(group_windows), tuple(layer_group), tuple(layer_slot))
