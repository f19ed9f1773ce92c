"""Runs one step of the model: owns the model weights and the KV cache tensors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.kernels import KernelSet
from engine.model.architectures.registry import build_model
from engine.model.forward_batch import AttentionPlanner, ForwardBatch, SampledRows
from engine.model.layers.linear import INVARIANT_ROWS, make_batch_invariant
from engine.model.layers.rotary import longrope_uses_long_factors
from engine.model.loader import ModelSource, iter_weights
from engine.model.loader.resolve import cache_dir
from engine.model.loader.snapshot import checkpoint_identity, converted_model
from engine.model.parallel import TensorParallel
from engine.model.quant.format import QuantFormat
from engine.model.quant.lowbit import LowBitKernels
from engine.scheduler import KVCacheGroups, SchedulerOutput

from .compiled_decode import CompiledDecode
from .cuda_graphs import DecodeGraphs
from .kv_cache import KVCache

logger = logging.getLogger(__name__)


@dataclass
class StepResult:
    """The logits the step produced.

    ``logits`` has one row per sample, owned as ``sampled`` says. ``prompt_logits[request_id]``
    holds the logits at each position the step computed for that request, for prompt
    log-probabilities.
    """

    sampled: list[SampledRows]
    logits: torch.Tensor  # fp32 [num_rows, vocab]
    prompt_logits: dict[str, torch.Tensor]


SNAPSHOT_MIN_BYTES = 32 * 2**20  # smaller checkpoints convert faster than their snapshot would load


def _materialize(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Allocate a meta-device model's tensors, uninitialised (``to_empty`` goes through torch's Python
    reference of ``empty_like``, whose first use imports sympy: most of a second)."""
    return model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))


class ModelRunner:
    def __init__(self, source: ModelSource, hf_config, device: torch.device, dtype: torch.dtype, ops: KernelSet,
                 quant: QuantFormat | None = None, low_bit: LowBitKernels | None = None, dequantize: bool = False,
                 tp: TensorParallel = TensorParallel(), batch_invariant: bool = False) -> None:
        """``ops``: the kernel set the model runs; ``low_bit``: keep the checkpoint's 4/8-bit weights in
        CPU kernels (``torch``: torch's, for small steps; ``rows``: ours, row-invariant, for every step);
        ``dequantize``: compute AWQ/GPTQ layers on dense weights (always so on the CPU); ``tp``: this rank's
        share of a tensor-parallel model; ``batch_invariant``: every token computed as a row alone (steps as
        decode rows, dense matmuls in row-invariant calls, low-bit ones on the ``rows`` kernels)."""
        self.device, self.dtype, self.ops, self.batch_invariant = device, dtype, ops, batch_invariant

        def load() -> torch.nn.Module:
            with torch.device("meta"):  # no random init of weights that are overwritten at once
                model = build_model(hf_config, ops, quant, tp)
            model = _materialize(model.to(dtype), device)
            model.load_weights(iter_weights(source), low_bit=low_bit, unpack_quantized=dequantize or device.type == "cpu")
            model.initialize_buffers(hf_config, device)
            return model.eval()

        files = [source.path] if source.is_gguf else list(source.path.glob("*.safetensors"))
        converts = device.type == "cpu" and not tp.enabled and (source.is_gguf or quant is not None)
        # unpacking and repacking low-bit blocks takes seconds to minutes; a small model's, milliseconds
        if converts and sum(f.stat().st_size for f in files) >= SNAPSHOT_MIN_BYTES:
            settings = [str(dtype), ops.name, repr(quant), f"low_bit={low_bit}", f"dequantize={dequantize}"]
            long_rope = longrope_uses_long_factors(hf_config, hf_config.max_position_embeddings)
            settings += [] if long_rope is None else [f"longrope_long={long_rope}"]  # the snapshot holds the table
            self.model = converted_model(cache_dir() / "converted", [*checkpoint_identity(files), *settings], load)
        else:
            self.model = load()
        if batch_invariant:
            make_batch_invariant(self.model)
        self.kv_cache: KVCache | None = None
        self.planner: AttentionPlanner | None = None
        self.decode_graphs: DecodeGraphs | None = None
        self.compiled_decode: CompiledDecode | None = None

    def allocate_kv_cache(self, groups: KVCacheGroups, num_blocks: int, block_size: int) -> None:
        spec = self.model.spec
        self.kv_cache = KVCache(groups, num_blocks, block_size, spec.local_kv_heads, spec.head_dim,
                                self.dtype, self.device)
        self.planner = AttentionPlanner(self.ops, block_size, spec.local_heads, spec.local_kv_heads,
                                        token_rows=self.batch_invariant)

    def capture_decode_graphs(self, max_num_seqs: int, max_model_len: int) -> None:
        """On CUDA: record decode steps as graphs (after the KV cache exists; it is captured by address)."""
        max_blocks = -(-max_model_len // self.kv_cache.block_size)
        self.decode_graphs = DecodeGraphs(self.model, self.kv_cache.layers, max_num_seqs, max_blocks, self.device)
        self.decode_graphs.capture()

    def compile_decode(self, max_num_seqs: int, folder: Path) -> None:
        """On the CPU: decode steps through compiled layer graphs, from ``folder`` or compiled in the background.

        A batch-invariant runner must never mix the compiled path with the eager one (their fused
        kernels round differently): it waits for every graph, and runs eagerly if any fails."""
        if not self.batch_invariant:
            self.compiled_decode = CompiledDecode(self.model, self.kv_cache.layers, max_num_seqs, folder)
            return
        compiled = CompiledDecode(self.model, self.kv_cache.layers, min(max_num_seqs, INVARIANT_ROWS), folder,
                                  min_rows=2)
        if not compiled.full_speed:
            logger.info("batch-invariant: waiting for the compiled graphs before serving (each step runs one way)")
        if compiled.wait():
            self.compiled_decode = compiled
        else:
            logger.warning("batch-invariant: compiling failed (%s); every step runs eagerly", compiled.error)

    def run_model(self, batch: ForwardBatch, graphs_allowed: bool = True) -> torch.Tensor:
        """Hidden states of every token of the step: a CUDA graph, the compiled CPU decode step, or eager.
        Batch-invariant: in parts of at most ``INVARIANT_ROWS`` rows, each on the one path the engine runs."""
        if self.batch_invariant:
            size = batch.input_ids.shape[0]
            return torch.cat([self._run_rows(batch.rows(start, min(start + INVARIANT_ROWS, size)))
                              for start in range(0, size, INVARIANT_ROWS)])
        if self.decode_graphs is not None and graphs_allowed and self.decode_graphs.can_run(batch):
            return self.decode_graphs.run(batch)
        if self.compiled_decode is not None and batch.is_decode:
            hidden = self.compiled_decode.run(batch)
            if hidden is not None:
                return hidden
        return self.model(batch.input_ids, batch.positions, batch.attention, self.kv_cache.layers)

    def _run_rows(self, batch: ForwardBatch) -> torch.Tensor:
        if self.compiled_decode is not None:
            return self.compiled_decode.run(batch)
        return self.model(batch.input_ids, batch.positions, batch.attention, self.kv_cache.layers)

    @torch.inference_mode()
    def execute(self, output: SchedulerOutput, prompt_logprob_ids: set[str] = frozenset()) -> StepResult:
        batch = ForwardBatch.build(output, self.planner, self.device)
        hidden = self.run_model(batch, graphs_allowed=not prompt_logprob_ids)
        logits = self.model.compute_logits(hidden[batch.logits_indices])
        prompt_logits = {}
        for item in output.scheduled:
            if item.request_id in prompt_logprob_ids:
                start = batch.token_offsets[item.request_id]
                prompt_logits[item.request_id] = self.model.compute_logits(hidden[start : start + item.num_tokens])
        return StepResult(batch.sampled, logits, prompt_logits)

    @torch.inference_mode()
    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy whole blocks of K/V in every layer slot (a forked sequence's partial last block, in each group)."""
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        for k_cache, v_cache in self.kv_cache.tensors:
            k_cache[dst] = k_cache[src]
            v_cache[dst] = v_cache[src]
