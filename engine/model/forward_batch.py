"""SchedulerOutput -> the step's tensors, built in one place.

A step of decodes only carries ``DecodeMetadata``. In a step with prompt tokens, requests with
one new token (decodes) come first so attention can run the decode kernel on
``[:num_decode_tokens]`` and the prefill kernel on the rest. Beside the tensors, the metadata
holds the engine's kernel set's attention plans, built here once per step for all layers (as
vLLM's attention-metadata builders do). The compiled CPU decode step rebuilds its metadata from
the tensors alone, so its graph sees no Python number that would specialise it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.kernels import KernelSet
from engine.scheduler import ScheduledRequest, SchedulerOutput


@dataclass(frozen=True)
class AttentionPlanner:
    """One engine's kernel set and the model's head counts: builds each step's attention plans."""

    ops: KernelSet
    block_size: int
    num_heads: int
    num_kv_heads: int

    def decode(self, block_tables: torch.Tensor, seq_lens: torch.Tensor):
        return self.ops.plan_decode(block_tables, seq_lens, self.block_size, self.num_heads, self.num_kv_heads)

    def prefill(self, block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor):
        return self.ops.plan_prefill(block_tables, cu_seqlens_q, seq_lens, self.block_size, self.num_heads,
                                     self.num_kv_heads)


@dataclass(frozen=True)
class SampledRows:
    """The rows of the step's logits one scheduled request draws from, in sequence order: the
    request itself, then (at a prompt's last step with n > 1) each fork it splits into."""

    request_id: str
    rows: range


@dataclass
class DecodeMetadata:
    slot_mapping: torch.Tensor  # int64 [num_seqs]
    block_tables: torch.Tensor  # int32 [num_seqs, max_blocks]
    seq_lens: torch.Tensor  # int32 [num_seqs]
    plan: object = None  # the kernel set's decode plan for this step; None: each call derives it


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # int64 [num_tokens]
    decode_block_tables: torch.Tensor  # int32 [num_decodes, max_blocks]
    decode_seq_lens: torch.Tensor  # int32 [num_decodes]
    prefill_block_tables: torch.Tensor  # int32 [num_prefills, max_blocks]
    prefill_cu_seqlens_q: torch.Tensor  # int32 [num_prefills + 1]
    prefill_seq_lens: torch.Tensor  # int32 [num_prefills]
    decode_plan: object = None
    prefill_plan: object = None

    @property
    def num_decode_tokens(self) -> int:
        return self.decode_seq_lens.shape[0]


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # int64 [num_tokens]
    positions: torch.Tensor  # int64 [num_tokens]
    attention: AttentionMetadata | DecodeMetadata
    logits_indices: torch.Tensor  # int64 [num_rows]: last token of each sampling request, once per sample
    sampled: list[SampledRows]  # in the order of logits_indices
    token_offsets: dict[str, int]  # where each request's tokens start in the flattened batch

    @classmethod
    def build(cls, output: SchedulerOutput, planner: AttentionPlanner, device: torch.device) -> "ForwardBatch":
        decodes = [s for s in output.scheduled if s.num_tokens == 1]
        prefills = [s for s in output.scheduled if s.num_tokens > 1]
        ordered = decodes + prefills

        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_indices: list[int] = []
        sampled: list[SampledRows] = []
        offsets: dict[str, int] = {}
        block_size = planner.block_size
        for item in ordered:
            offsets[item.request_id] = len(input_ids)
            table = item.block_table
            for pos in range(item.start_pos, item.seq_len):
                positions.append(pos)
                slots.append(table[pos // block_size] * block_size + pos % block_size)
            input_ids.extend(item.token_ids)
            if item.sample:
                first_row = len(logits_indices)
                logits_indices.extend([len(input_ids) - 1] * item.num_samples)
                sampled.append(SampledRows(item.request_id, range(first_row, len(logits_indices))))

        def tensor(values, dtype=torch.int64):
            return torch.tensor(values, dtype=dtype, device=device)

        decode_tables = _block_tables(decodes, device)
        decode_seq_lens = tensor([s.seq_len for s in decodes], torch.int32)
        decode_plan = planner.decode(decode_tables, decode_seq_lens) if decodes else None
        if not prefills:
            attention = DecodeMetadata(tensor(slots), decode_tables, decode_seq_lens, decode_plan)
            return cls(tensor(input_ids), tensor(positions), attention, tensor(logits_indices), sampled, offsets)
        cu_seqlens = [0]
        for item in prefills:
            cu_seqlens.append(cu_seqlens[-1] + item.num_tokens)
        prefill_tables = _block_tables(prefills, device)
        prefill_cu_seqlens = tensor(cu_seqlens, torch.int32)
        prefill_seq_lens = tensor([s.seq_len for s in prefills], torch.int32)
        attention = AttentionMetadata(
            slot_mapping=tensor(slots),
            decode_block_tables=decode_tables,
            decode_seq_lens=decode_seq_lens,
            prefill_block_tables=prefill_tables,
            prefill_cu_seqlens_q=prefill_cu_seqlens,
            prefill_seq_lens=prefill_seq_lens,
            decode_plan=decode_plan,
            prefill_plan=planner.prefill(prefill_tables, prefill_cu_seqlens, prefill_seq_lens),
        )
        return cls(tensor(input_ids), tensor(positions), attention, tensor(logits_indices), sampled, offsets)


def _block_tables(items: list[ScheduledRequest], device: torch.device) -> torch.Tensor:
    width = max((len(s.block_table) for s in items), default=0)
    rows = [s.block_table + [-1] * (width - len(s.block_table)) for s in items]
    return torch.tensor(rows, dtype=torch.int32, device=device).reshape(len(items), width)
