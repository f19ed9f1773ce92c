"""The CPU decode step compiled by torch.compile (inductor's C++ backend).

Eagerly, a decode step of the default model runs ~75 small ops per layer (norms, rotary, cache
writes, attention, activations), whose dispatch costs more than their arithmetic at small
batches. Compiled, each layer is a handful of fused C++ loops around the matmuls, and the
attention reads the cache in place (``kernels.fused_cpu``).

Shapes: the batch and the block-table width are symbolic (``mark_dynamic``, with size-oblivious
reasoning so a width of 1 is not special), so no batch size or context length recompiles. The
specialisations are a batch of one (some fake-tensor stride rules tell 1 apart whatever the
reasoning) and the ones the model asks for: a layer with a low-bit kernel takes it up to
``max_rows`` rows, so there is one graph per range of batch sizes between those limits.
``warm_up`` compiles every one of them at start-up, before any request waits on it.

Artifacts are cached on disk by inductor (``TORCHINDUCTOR_CACHE_DIR``, by default
``<engine cache>/inductor``), so a second start with the same model and torch skips codegen and
the C++ compiler.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import types
from pathlib import Path

import torch
import torch.fx.experimental._config as fx_config

from .forward_batch import DecodeMetadata, ForwardBatch
from .layers.linear import Linear

logger = logging.getLogger(__name__)
_instances = itertools.count()


def use_compile_cache(folder: Path) -> Path:
    """Point inductor's on-disk cache at ``folder`` unless the user chose one (``TORCHINDUCTOR_CACHE_DIR``)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def _decode_step(model, kv_layers, input_ids, positions, slot_mapping, block_tables, seq_lens) -> torch.Tensor:
    return model(input_ids, positions, DecodeMetadata(slot_mapping, block_tables, seq_lens), kv_layers)


class CompiledDecode:
    def __init__(self, model: torch.nn.Module, kv_layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        from torch._inductor.compile_fx import compile_fx

        self.model, self.kv_layers = model, kv_layers
        self.num_graphs = 0  # compiled so far by this engine: stays put after warm_up
        self.warm = False

        def inductor(graph, example_inputs):
            self.num_graphs += 1
            return compile_fx(graph, example_inputs)

        # dynamo keeps compiled graphs on the code object: a code object of its own keeps this engine's
        # graphs apart from other engines' in the process (and frees them with it)
        code = _decode_step.__code__.replace(co_name=f"decode_step_{next(_instances)}")
        step = types.FunctionType(code, _decode_step.__globals__)
        self._compiled = torch.compile(step, backend=inductor, fullgraph=True, dynamic=False)

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Hidden states of a decode-only step, ``[num_seqs, hidden]``."""
        meta = batch.attention
        return self._call(batch.input_ids, batch.positions, meta.slot_mapping, meta.block_tables, meta.seq_lens)

    def _call(self, *inputs: torch.Tensor) -> torch.Tensor:
        for tensor in inputs:
            torch._dynamo.mark_dynamic(tensor, 0)
        torch._dynamo.mark_dynamic(inputs[3], 1)  # block-table width: the longest context of the step
        if self.warm:  # every graph exists: check only the guards that tell them apart
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return self._compiled(self.model, self.kv_layers, *inputs)
        with fx_config.patch(backed_size_oblivious=True):
            return self._compiled(self.model, self.kv_layers, *inputs)

    def batch_size_limits(self) -> list[int]:
        """The row limits the model branches on: one graph per range between them."""
        return sorted({module.low_bit.max_rows for module in self.model.modules()
                       if isinstance(module, Linear) and module.low_bit is not None})

    @torch.inference_mode()
    def warm_up(self, max_num_seqs: int, block_size: int) -> None:
        """Compile the graph of every batch-size range now, on dummy steps writing block 0."""
        started = time.monotonic()
        sizes = sorted({1, 2, *(limit + 1 for limit in self.batch_size_limits())} & set(range(1, max_num_seqs + 1)))
        device = self.kv_layers[0][0].device
        for size in sizes:
            ids = torch.zeros(size, dtype=torch.int64, device=device)
            block_tables = torch.zeros((size, 2), dtype=torch.int32, device=device)
            seq_lens = torch.ones(size, dtype=torch.int32, device=device)
            self._call(ids, ids.clone(), torch.arange(size, device=device) % block_size, block_tables, seq_lens)
        self.warm = True
        logger.info("compiled the decode step for batch sizes from %s (%d graphs) in %.1f s; cache: %s",
                    sizes, self.num_graphs, time.monotonic() - started, os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
