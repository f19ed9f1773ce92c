"""SchedulerOutput -> the step's tensors, built in one place.

A step of decodes only carries ``DecodeMetadata``. In a step with prompt tokens, requests with
one new token (decodes) come first so attention can run the decode kernel on
``[:num_decode_tokens]`` and the prefill kernel on the rest. Beside the tensors, the metadata
holds the engine's kernel set's attention plans, built here once per step for all layers (as
vLLM's attention-metadata builders do). There is one metadata per KV cache group
(scheduler/kv_groups.py): a model with sliding-window layers addresses them through tables of
their own. The compiled CPU decode step rebuilds its metadata from
the tensors alone, so its graph sees no Python number that would specialise it.

A batch-invariant engine lays every step out as decode rows (``AttentionPlanner.token_rows``): each
token, prompt tokens included, is a row of its own with its request's block table and the context up
to its own position, so its attention is computed alike in a prompt, a chunk of one, a step after a
prefix-cache hit or a decode step (the step writes its K/V before any row attends).
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
    token_rows: bool = False  # every token a decode row of its own (batch-invariant steps)

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
    # per KV cache group (scheduler/kv_groups.py), its layers' slots, tables and plans; one for most models
    attention: tuple[AttentionMetadata, ...] | tuple[DecodeMetadata, ...]
    logits_indices: torch.Tensor  # int64 [num_rows]: last token of each sampling request, once per sample
    sampled: list[SampledRows]  # in the order of logits_indices
    token_offsets: dict[str, int]  # where each request's tokens start in the flattened batch

    def rows(self, start: int, stop: int) -> "ForwardBatch":
        """Tokens ``start .. stop`` of a step laid out as decode rows, as a step of their own (the model's
        inputs only): a batch-invariant step runs in such parts, in order, so each part attends to what
        the ones before it wrote."""
        attention = tuple(DecodeMetadata(meta.slot_mapping[start:stop], meta.block_tables[start:stop],
                                         meta.seq_lens[start:stop]) for meta in self.attention)
        return ForwardBatch(self.input_ids[start:stop], self.positions[start:stop], attention,
                            self.logits_indices[:0], [], {})

    def padded(self, rows: int) -> "ForwardBatch":
        """A decode-row step grown to ``rows`` rows with copies of its last row (the model's inputs only): the
        copies compute and write exactly what that row does."""
        extra = rows - self.input_ids.shape[0]

        def grown(t: torch.Tensor) -> torch.Tensor:
            return torch.cat((t, t[-1:].expand(extra, *t.shape[1:])))

        attention = tuple(DecodeMetadata(grown(meta.slot_mapping), grown(meta.block_tables), grown(meta.seq_lens))
                          for meta in self.attention)
        return ForwardBatch(grown(self.input_ids), grown(self.positions), attention, self.logits_indices[:0], [], {})

    @property
    def is_decode(self) -> bool:
        """One token per sequence: the step the CUDA graphs and the compiled CPU step run."""
        return isinstance(self.attention[0], DecodeMetadata)

    @classmethod
    def build(cls, output: SchedulerOutput, planner: AttentionPlanner, device: torch.device) -> "ForwardBatch":
        decodes = [s for s in output.scheduled if s.num_tokens == 1]
        prefills = [s for s in output.scheduled if s.num_tokens > 1]
        ordered = decodes + prefills

        input_ids: list[int] = []
        positions: list[int] = []
        logits_indices: list[int] = []
        sampled: list[SampledRows] = []
        offsets: dict[str, int] = {}
        for item in ordered:
            offsets[item.request_id] = len(input_ids)
            positions.extend(range(item.start_pos, item.seq_len))
            input_ids.extend(item.token_ids)
            if item.sample:
                first_row = len(logits_indices)
                logits_indices.extend([len(input_ids) - 1] * item.num_samples)
                sampled.append(SampledRows(item.request_id, range(first_row, len(logits_indices))))

        def tensor(values, dtype=torch.int64):
            return torch.tensor(values, dtype=dtype, device=device)

        if planner.token_rows:
            attention = _token_rows(ordered, positions, planner.block_size, device)
            return cls(tensor(input_ids), tensor(positions), attention, tensor(logits_indices), sampled, offsets)
        decode_seq_lens = tensor([s.seq_len for s in decodes], torch.int32)
        cu_seqlens = [0]
        for item in prefills:
            cu_seqlens.append(cu_seqlens[-1] + item.num_tokens)
        prefill_cu_seqlens = tensor(cu_seqlens, torch.int32)
        prefill_seq_lens = tensor([s.seq_len for s in prefills], torch.int32)
        attention = []
        for group in range(len(ordered[0].block_tables)):
            slots = tensor(_slots(ordered, group, planner.block_size))
            decode_tables = _block_tables(decodes, group, device)
            decode_plan = planner.decode(decode_tables, decode_seq_lens) if decodes else None
            if not prefills:
                attention.append(DecodeMetadata(slots, decode_tables, decode_seq_lens, decode_plan))
                continue
            prefill_tables = _block_tables(prefills, group, device)
            attention.append(AttentionMetadata(
                slot_mapping=slots,
                decode_block_tables=decode_tables,
                decode_seq_lens=decode_seq_lens,
                prefill_block_tables=prefill_tables,
                prefill_cu_seqlens_q=prefill_cu_seqlens,
                prefill_seq_lens=prefill_seq_lens,
                decode_plan=decode_plan,
                prefill_plan=planner.prefill(prefill_tables, prefill_cu_seqlens, prefill_seq_lens),
            ))
        return cls(tensor(input_ids), tensor(positions), tuple(attention), tensor(logits_indices), sampled, offsets)


def _token_rows(items: list[ScheduledRequest], positions: list[int], block_size: int,
                device: torch.device) -> tuple[DecodeMetadata, ...]:
    """Per KV cache group, one decode row per token: its request's table, the context up to its position."""
    seq_lens = torch.tensor(positions, dtype=torch.int32, device=device) + 1
    tokens_per_item = torch.tensor([item.num_tokens for item in items], device=device)
    return tuple(
        DecodeMetadata(torch.tensor(_slots(items, group, block_size), dtype=torch.int64, device=device),
                       _block_tables(items, group, device).repeat_interleave(tokens_per_item, dim=0), seq_lens)
        for group in range(len(items[0].block_tables))
    )


def _slots(items: list[ScheduledRequest], group: int, block_size: int) -> list[int]:
    """The cache slot of each of the step's tokens in one group's blocks."""
    slots = []
    for item in items:
        table = item.block_tables[group]
        slots.extend(table[pos // block_size] * block_size + pos % block_size
                     for pos in range(item.start_pos, item.seq_len))
    return slots


def _block_tables(items: list[ScheduledRequest], group: int, device: torch.device) -> torch.Tensor:
    tables = [s.block_tables[group] for s in items]
    width = max((len(table) for table in tables), default=0)
    rows = [table + [-1] * (width - len(table)) for table in tables]
    return torch.tensor(rows, dtype=torch.int32, device=device).reshape(len(items), width)
