"""The CPU decode step compiled by torch.compile (inductor's C++ backend).

Eagerly, a decode step of the default model runs ~75 small ops per layer (norms, rotary, cache
writes, attention, activations), whose dispatch costs more than their arithmetic at small
batches. Compiled, each layer is a handful of fused C++ loops around the matmuls and the
attention, which reads the cache in place (``engine.kernels.cpu``, C++ built on first use).

Shapes: the batch and the block-table width are symbolic (``mark_dynamic``, with size-oblivious
reasoning so a width of 1 is not special), so no batch size or context length recompiles. The
graphs differ only where the model branches on the batch: a batch of one (some fake-tensor
stride rules tell 1 apart whatever the reasoning) and the row limits of the low-bit kernels
(a layer takes its int4/int8 weight up to ``max_rows`` rows). That makes a few batch-size
ranges, one graph each, all compiled by ``warm_up`` before any request waits.

Once warm, a step calls its range's compiled code directly (the bytecode dynamo produced, as
vLLM's custom dispatcher does): dynamo's guards over ~400 weight tensors would cost ~1.5 ms a
step. That is sound because nothing the guards watch changes after start-up (weights, dtypes,
grad mode), and ``warm_up`` checks what the dispatch assumes: a second batch size and another
table width in each range run on its graph without compiling.

Inductor writes the step's wrapper in C++ as well as its kernels (``cpp_wrapper``), so a step
is one call into compiled code. Artifacts are cached on disk by inductor
(``TORCHINDUCTOR_CACHE_DIR``, by default ``<engine cache>/inductor``), so a second start with the
same model and torch skips codegen and the C++ compiler; dynamo still traces each graph (~10 s
each for the default model).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import time
import types
from pathlib import Path

import torch
import torch.fx.experimental._config as fx_config

from engine.kernels import cpu as cpu_kernels
from engine.model.forward_batch import DecodeMetadata, ForwardBatch
from engine.model.layers.linear import Linear

logger = logging.getLogger(__name__)
_instances = itertools.count()
# A C++ wrapper calls the step's ~300 kernels and extern ops without Python in between: 6-14% off the
# step at batches 1-32 on the default model (benchmarks/NOTES.md), for a longer first compile.
INDUCTOR_OPTIONS = {"cpp_wrapper": True}


def use_compile_cache(folder: Path) -> Path:
    """Point inductor's on-disk cache at ``folder`` unless the user chose one (``TORCHINDUCTOR_CACHE_DIR``)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def _decode_step(model, kv_layers, input_ids, positions, slot_mapping, block_tables, seq_lens) -> torch.Tensor:
    return model(input_ids, positions, DecodeMetadata(slot_mapping, block_tables, seq_lens), kv_layers)


class CompiledDecode:
    def __init__(self, model: torch.nn.Module, kv_layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        from torch._inductor.compile_fx import compile_fx

        cpu_kernels.load()
        self.model, self.kv_layers = model, kv_layers
        self.num_graphs = 0  # compiled so far by this engine: stays put after warm_up

        def inductor(graph, example_inputs):
            self.num_graphs += 1
            return compile_fx(graph, example_inputs, config_patches=INDUCTOR_OPTIONS)

        # dynamo keeps compiled graphs on the code object: a code object of its own keeps this engine's
        # graphs apart from other engines' in the process (and frees them with it)
        code = _decode_step.__code__.replace(co_name=f"decode_step_{next(_instances)}")
        self._step = types.FunctionType(code, _decode_step.__globals__)
        self._compiled = torch.compile(self._step, backend=inductor, fullgraph=True, dynamic=False)
        self._range_starts: list[int] = []  # the smallest batch of each range, ascending
        self._range_steps: list[types.FunctionType] = []  # its compiled code, called without guards

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Hidden states of a decode-only step, ``[num_seqs, hidden]``."""
        meta = batch.attention
        inputs = (batch.input_ids, batch.positions, meta.slot_mapping, meta.block_tables, meta.seq_lens)
        if not self._range_steps:
            return self._guarded(*inputs)
        step = self._range_steps[bisect.bisect_right(self._range_starts, inputs[0].shape[0]) - 1]
        return step(self.model, self.kv_layers, *inputs)

    def _guarded(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Through dynamo: compiles on a guard miss."""
        for tensor in inputs:
            torch._dynamo.mark_dynamic(tensor, 0)
        torch._dynamo.mark_dynamic(inputs[3], 1)  # block-table width: the longest context of the step
        with fx_config.patch(backed_size_oblivious=True):
            return self._compiled(self.model, self.kv_layers, *inputs)

    def batch_size_limits(self) -> list[int]:
        """The row limits the model branches on: one graph per range between them."""
        return sorted({module.low_bit.max_rows for module in self.model.modules()
                       if isinstance(module, Linear) and module.low_bit is not None})

    @torch.inference_mode()
    def warm_up(self, max_num_seqs: int, block_size: int) -> None:
        """Compile the graph of every batch-size range now (dummy steps writing block 0), keep each
        graph's code for direct calls, and check that each serves a second size and width unchanged."""
        started = time.monotonic()
        limits = [limit for limit in self.batch_size_limits() if limit < max_num_seqs]
        starts = sorted({1, 2, *(limit + 1 for limit in limits)} & set(range(1, max_num_seqs + 1)))
        ends = [next_start - 1 for next_start in starts[1:]] + [max_num_seqs]
        captured: list[types.CodeType] = []

        def capture(code: types.CodeType, new_code: types.CodeType) -> None:
            if code is self._step.__code__:
                captured.append(new_code)

        logger.info("compiling the decode step for batch ranges %s: minutes on a first start, seconds once "
                    "cached in %s (enforce_eager skips it)", [f"{start}-{end}" for start, end in zip(starts, ends)],
                    os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
        hook = torch._dynamo.convert_frame.register_bytecode_hook(capture)
        try:
            for index, (start, end) in enumerate(zip(starts, ends)):
                graph_started = time.monotonic()
                self._guarded(*self._dummy_inputs(start, 2, block_size))
                logger.info("decode graph %d/%d (batches %d-%d) ready in %.1f s", index + 1, len(starts), start, end,
                            time.monotonic() - graph_started)
        finally:
            hook.remove()
        if len(captured) != len(starts):
            raise RuntimeError(f"expected one compiled graph per batch range starting at {starts}, got {len(captured)}")
        graphs = self.num_graphs
        for start, end in zip(starts, ends):
            self._guarded(*self._dummy_inputs(end, 3, block_size))
        if self.num_graphs != graphs:
            raise RuntimeError(f"a batch range {list(zip(starts, ends))} needed a second graph; cannot dispatch by range")
        self._range_starts = starts
        self._range_steps = [types.FunctionType(code, self._step.__globals__) for code in captured]
        logger.info("compiled the decode step (%d graphs) in %.1f s", self.num_graphs, time.monotonic() - started)

    def _dummy_inputs(self, size: int, width: int, block_size: int) -> tuple[torch.Tensor, ...]:
        device = self.kv_layers[0][0].device
        ids = torch.zeros(size, dtype=torch.int64, device=device)
        block_tables = torch.zeros((size, width), dtype=torch.int32, device=device)
        seq_lens = torch.ones(size, dtype=torch.int32, device=device)
        return ids, ids.clone(), torch.arange(size, device=device) % block_size, block_tables, seq_lens
