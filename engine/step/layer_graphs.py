"""One decoder layer as an ahead-of-time compiled graph that every layer of its kind shares.

The CPU decode step spends most of its time in ~75 small ops per layer whose dispatch costs more
than their arithmetic; compiled, a layer is a handful of fused C++ loops around its matmuls and
the C++ paged attention. The graph takes the layer's weights as inputs, so the 30 layers of the
default model run one graph (compiled once, in ~10 s) rather than a whole-model graph per batch
range (minutes each).

A graph is compiled by AOTInductor (``torch.export``, then ``aoti_compile_and_package``) into a
``.pt2`` package in the engine's cache folder. Its name is a digest of everything the graph
depends on: the layer's structure (its pickled meta-device copy: classes, settings, tensor shapes
and dtypes), the shapes of the step's inputs, the batch range, our model and kernel sources,
torch's version and the CPU's features. Nothing a serving flag sets reaches a graph: the KV pool
size, the block-table width and the batch within a range are dynamic dimensions, so changing
``--num-kv-blocks`` or ``--max-num-seqs`` reuses every package. A later start loads a package in
milliseconds through torch's C++ loader, with no tracing and no import of inductor.

Batch ranges: a layer branches on its number of rows only where a low-bit kernel stops paying
(``Linear``: up to ``low_bit.max_rows`` rows) or, batch-invariant, where its matmuls would be split
(``rows_per_call``), and a batch of one is a static graph, so the ranges are 1, 2..limit, limit+1.. for
each distinct limit.
"""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.kernels import cpu as cpu_kernels
from engine.model.architectures.decoder import Step
from engine.model.forward_batch import DecodeMetadata
from engine.model.layers.linear import Linear
from engine.model.loader.snapshot import sources_digest

# what the graphs' code comes from: a change to any of these files names new packages
_SOURCE_ROOTS = (Path(__file__).parents[1] / "model", Path(cpu_kernels.__file__).parent)


@dataclass(frozen=True)
class BatchRange:
    start: int
    end: int | None  # inclusive; None: unbounded

    def __contains__(self, size: int) -> bool:
        return size >= self.start and (self.end is None or size <= self.end)

    def describe(self) -> str:
        return f"{self.start}" if self.end == self.start else f"{self.start}-{self.end or ''}"


def batch_ranges(layer: nn.Module, max_num_seqs: int, min_rows: int = 1) -> list[BatchRange]:
    """The ranges of batch sizes up to ``max_num_seqs`` within which the layer takes one path. ``min_rows`` 2:
    no static graph of one row (inductor reduces a static row otherwise than the rows of a dynamic batch, so a
    batch-invariant engine runs a lone row padded to two)."""
    linears = [m for m in layer.modules() if isinstance(m, Linear)]
    limits = sorted({m.low_bit.max_rows for m in linears if m.low_bit is not None and m.low_bit.max_rows is not None}
                    | {m.rows_per_call for m in linears if m.rows_per_call is not None})
    starts = sorted({min_rows, 2, *(limit + 1 for limit in limits)})
    ranges = [BatchRange(start, next_start - 1) for start, next_start in itertools.pairwise(starts)]
    ranges.append(BatchRange(starts[-1], None))
    return [r for r in ranges if r.start <= max_num_seqs]


def layer_tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    """The layer's parameters and buffers by name, in a fixed order: the graph's first inputs."""
    tensors = dict(layer.named_parameters())
    tensors.update((name, buffer) for name, buffer in layer.named_buffers() if buffer is not None)
    return tensors


def meta_copy(layer: nn.Module) -> nn.Module:
    """The layer's structure without its data: what a graph is compiled from, in another process."""
    memo = {id(t): (nn.Parameter(t.to("meta"), requires_grad=False) if isinstance(t, nn.Parameter) else t.to("meta"))
            for t in itertools.chain(layer.parameters(), layer.buffers())}
    return copy.deepcopy(layer, memo)


class LayerCall(nn.Module):
    """The layer as a function of its tensors and the step's: what is exported."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.names = list(layer_tensors(layer))

    def forward(self, tensors: list[torch.Tensor], hidden, residual, positions, cos_sin_cache, local_cos_sin_cache,
                slot_mapping, block_tables, seq_lens, k_cache, v_cache):
        step = Step(positions, cos_sin_cache, DecodeMetadata(slot_mapping, block_tables, seq_lens), local_cos_sin_cache)
        return torch.func.functional_call(self.layer, dict(zip(self.names, tensors)),
                                          (hidden, residual, step, (k_cache, v_cache)))


@dataclass(frozen=True)
class StepShapes:
    """What a decode step's inputs look like beyond the dimensions that vary at run time."""

    hidden_size: int
    dtype: torch.dtype
    cos_sin_cache: tuple[tuple[int, ...], torch.dtype]
    kv_block: tuple[int, ...]  # a cache block: block_size, kv heads, head dim

    def examples(self, batch: int) -> tuple[torch.Tensor, ...]:
        """Inputs in ``LayerCall``'s order after the layer's tensors: a step of ``batch`` sequences,
        block tables two wide, a pool of two blocks."""
        hidden = torch.zeros(batch, self.hidden_size, dtype=self.dtype)
        ids = torch.zeros(batch, dtype=torch.int64)
        cache = torch.zeros(2, *self.kv_block, dtype=self.dtype)
        table = torch.zeros(self.cos_sin_cache[0], dtype=self.cos_sin_cache[1])
        return (hidden, hidden.clone(), ids, table, table.clone(), ids.clone(), torch.zeros(batch, 2, dtype=torch.int32),
                torch.ones(batch, dtype=torch.int32), cache, cache.clone())

    @staticmethod
    def dynamic_shapes(batch: BatchRange) -> tuple:
        """``torch.export``'s dimensions for ``examples``: the batch within its range, the table's width, the pool."""
        from torch.export import Dim

        rows = None if batch.end == batch.start else {0: Dim("batch", min=batch.start, max=batch.end)}
        width = {**(rows or {}), 1: Dim("width", min=1)}
        pool = {0: Dim("blocks", min=1)}
        return rows, rows, rows, None, None, rows, width, rows, pool, pool


def structure_digest(structure: nn.Module) -> str:
    """A digest of a layer's meta copy: layers with equal digests share their graphs."""
    buffer = io.BytesIO()
    torch.save(structure, buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


@dataclass
class LayerGraph:
    """What compiles one package: a layer's meta copy, the step's shapes, a batch range."""

    layer: nn.Module  # on the meta device
    step: StepShapes
    batch: BatchRange
    path: Path  # the package

    @classmethod
    def describe(cls, structure: nn.Module, digest: str, step: StepShapes, batch: BatchRange,
                 folder: Path) -> LayerGraph:
        """``structure``: a layer's meta copy, ``digest`` its ``structure_digest``."""
        key = hashlib.sha256("\0".join([digest, repr(step), batch.describe(), torch.__version__,
                                        cpu_kernels.cpu_fingerprint(), sources_digest(_SOURCE_ROOTS)]).encode())
        return cls(structure, step, batch, folder / f"layer-{key.hexdigest()[:24]}.pt2")

    def compile(self) -> None:
        """Export and compile the package (seconds to a minute); it is written whole or not at all."""
        layer = self.layer.to_empty(device="cpu")
        tensors = list(layer_tensors(layer).values())
        shapes = ([None] * len(tensors), *self.step.dynamic_shapes(self.batch))
        with torch.no_grad():
            program = torch.export.export(LayerCall(layer), (tensors, *self.step.examples(self.batch.start)),
                                          dynamic_shapes=shapes, strict=False)
        from torch._inductor import aoti_compile_and_package

        partial = self.path.with_name(f"{self.path.stem}.{os.getpid()}.partial.pt2")  # replicas may compile it too
        self.path.parent.mkdir(parents=True, exist_ok=True)
        aoti_compile_and_package(program, package_path=str(partial))
        partial.replace(self.path)


def load_package(path: Path):
    """The package's runner, through torch's C++ loader (milliseconds; no inductor import):
    ``runner.boxed_run(inputs)`` takes the layer's tensors then the step's, and returns ``[hidden, residual]``."""
    return torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
