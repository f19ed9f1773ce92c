"""CUDA graphs for decode steps: captured once per batch size, replayed with fresh inputs.

A decode step launches a few hundred small kernels; replaying a graph removes their launch
cost. Every input lives in a static buffer sized for the largest captured batch; a step of
``n`` decodes runs the smallest captured size ``>= n`` with the extra rows padded (slot -1,
so nothing is written; length 1 on block 0, whose output is dropped). Prefill and mixed steps
run eagerly.
"""

from __future__ import annotations

import logging
import time

import torch

from engine.model.architectures.decoder import LayerKV
from engine.model.forward_batch import DecodeMetadata, ForwardBatch

logger = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16))
    return [size for size in sizes if size <= max_num_seqs] or [1]


class DecodeGraphs:
    def __init__(self, model, kv_layers: list[LayerKV], max_num_seqs: int, max_blocks_per_seq: int,
                 device: torch.device) -> None:
        self.model = model
        self.kv_layers = kv_layers
        self.sizes = capture_sizes(max_num_seqs)
        largest = self.sizes[-1]
        num_groups = max(group for _, _, group in kv_layers) + 1  # KV cache groups: one slot map and table each
        self.input_ids = torch.zeros(largest, dtype=torch.int64, device=device)
        self.positions = torch.zeros(largest, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((num_groups, largest), -1, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros((num_groups, largest, max_blocks_per_seq), dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(largest, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    @property
    def max_size(self) -> int:
        return self.sizes[-1]

    def _forward(self, size: int) -> torch.Tensor:
        attention = tuple(DecodeMetadata(slots[:size], tables[:size], self.seq_lens[:size])
                          for slots, tables in zip(self.slot_mapping, self.block_tables))
        return self.model(self.input_ids[:size], self.positions[:size], attention, self.kv_layers)

    @torch.inference_mode()
    def capture(self) -> None:
        started = time.monotonic()
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):  # largest first, so smaller graphs reuse its memory
            for _ in range(2):  # warm up: Triton compiles and autotunes outside the capture
                self._forward(size)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self._forward(size)
            self.graphs[size] = graph
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs for decode batch sizes %s in %.1f s", self.sizes, time.monotonic() - started)

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.is_decode and 0 < batch.input_ids.shape[0] <= self.max_size

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Hidden states of the step's ``n`` decode tokens (rows past ``n`` are padding)."""
        n = batch.input_ids.shape[0]
        size = next(s for s in self.sizes if s >= n)
        self.input_ids[:n].copy_(batch.input_ids)
        self.positions[:n].copy_(batch.positions)
        for slots, tables, meta in zip(self.slot_mapping, self.block_tables, batch.attention):
            slots[:n].copy_(meta.slot_mapping)
            slots[n:size].fill_(-1)
            tables[:n, : meta.block_tables.shape[1]].copy_(meta.block_tables)
            tables[n:size].zero_()
        self.seq_lens[:n].copy_(batch.attention[0].seq_lens)
        self.seq_lens[n:size].fill_(1)
        self.graphs[size].replay()
        return self.outputs[size][:n]
