"""The synchronous engine: add requests, then ``step()`` until none is left.

One step hands typed carriers down and back up:
``Request`` (scheduler) -> ``SchedulerOutput`` -> ``ForwardBatch`` (model runner)
-> ``StepResult`` (logits) -> sampled ids -> ``Scheduler.update`` -> ``RequestOutput``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from engine.config import EngineConfig, RuntimeInfo
from engine.kernels import kernel_set, resolve_kernels
from engine.model.layers.rotary import SERVED_CONTEXT
from engine.model.loader import load_hf_config, resolve_model
from engine.model.loader.resolve import cache_dir
from engine.model.parallel import TensorParallel
from engine.model.quant.format import quant_format_from
from engine.model.quant.lowbit import cpu_int4_available, rows_kernel_available
from engine.processing.input_processor import InputProcessor, PromptType
from engine.processing.output_processor import OutputProcessor, RequestState, fork_id
from engine.processing.outputs import RequestMetrics, RequestOutput
from engine.processing.tokenizer import load_tokenizer
from engine.sampling.grammar import GrammarCompiler
from engine.sampling.sampler import Sampler
from engine.sampling.sampling_params import InvalidSamplingParam, SamplingParams
from engine.scheduler import FinishReason, KVCacheGroups, Request, Scheduler, SchedulerConfig, StopConditions

from .kv_cache import bytes_per_block, num_blocks_for_memory
from .model_runner import ModelRunner
from .parallel_runner import ParallelRunner, RunnerArgs

logger = logging.getLogger(__name__)

DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request, ready for ``add_prepared`` (possibly on the engine's own thread)."""

    request: Request
    state: RequestState


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_used_blocks: int
    num_total_blocks: int
    num_preemptions: int
    num_prefill_tokens: int  # tokens run through the model as prompt (or recompute) chunks, all time
    num_generated_tokens: int  # tokens sampled, all time
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache, all time
    prefix_cache_hits: int  # of those, tokens found
    compiled_graphs: int = 0  # CPU decode graphs loaded so far: full speed once it reaches graphs_total
    graphs_total: int = 0  # the graphs the fast decode path needs (0: none, e.g. eager or CUDA)


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        """Load the model and tokenizer, size the KV cache, and set up the fast decode path; the engine
        serves as soon as this returns, while CPU decode graphs may still compile in the background."""
        self.config = config
        source = resolve_model(config.model)
        self.model_name = source.name
        hf_config = load_hf_config(source)
        device = config.resolve_device()
        dtype = config.resolve_dtype(device, getattr(hf_config, "dtype", None))
        max_model_len = _max_model_len(config, hf_config)
        setattr(hf_config, SERVED_CONTEXT, max_model_len)  # LongRoPE's factors follow it (layers/rotary.py)
        started = time.monotonic()
        self.tokenizer = load_tokenizer(source, config.chat_template)
        self.runner = self._build_runner(source, hf_config, device, dtype)
        spec = self.runner.model.spec
        kv_groups = KVCacheGroups.of_layers([spec.window(layer) for layer in range(spec.num_layers)], max_model_len)
        num_blocks, block_bytes, max_num_batched_tokens = self._size_kv_cache(device, dtype, kv_groups.group_size)
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            block_size=config.block_size,
            num_blocks=num_blocks,
            max_model_len=max_model_len,
            enable_prefix_caching=config.enable_prefix_caching,
            kv_group_windows=kv_groups.windows,
        ))
        self.runner.allocate_kv_cache(kv_groups, num_blocks, config.block_size)
        self._set_up_fast_decode(device, max_model_len)
        self.runtime = RuntimeInfo(device, dtype, max_model_len, max_num_batched_tokens, num_blocks,
                                   num_blocks * block_bytes)
        logger.info("loaded %s in %.1f s: %s", source.name, time.monotonic() - started, self.runtime.describe())

        self.vocab_size = spec.vocab_size
        self.eos_token_id = self.tokenizer.eos_token_id
        self.input_processor = InputProcessor(self.tokenizer, spec.vocab_size)
        self.output_processor = OutputProcessor(self.tokenizer, self.eos_token_id)
        self.grammars = GrammarCompiler(self.tokenizer, spec.vocab_size)
        self.sampler = Sampler(config.seed, device)
        self._num_prefill_tokens = 0
        self._num_generated_tokens = 0

    @property
    def _eager(self) -> bool:
        # the compiled CPU step and CUDA graphs are not yet measured with collectives inside: eager under TP
        return self.config.enforce_eager or self.config.tensor_parallel_size > 1

    def _build_runner(self, source, hf_config, device: torch.device, dtype: torch.dtype) -> ModelRunner | ParallelRunner:
        """Load the weights: on this process, or on one worker process per tensor-parallel rank."""
        config = self.config
        kernels = resolve_kernels(config.kernels, device)
        if config.batch_invariant:
            _check_batch_invariant(config, device, kernels)
            kernels = "torch-rows"
        ops = kernel_set(kernels)
        quant = quant_format_from(hf_config, None if source.is_gguf else source.path, config.quantization)
        dequantize = config.quantization == "none"
        # the CPU low-bit kernels take bf16 activations (torch's are 25-125x slower in fp32)
        kernels_here = rows_kernel_available() if config.batch_invariant else cpu_int4_available()
        low_bit = ("rows" if config.batch_invariant else "torch") \
            if device.type == "cpu" and dtype == torch.bfloat16 and not dequantize and kernels_here else None
        runner_args = RunnerArgs(source, hf_config, device, dtype, ops.name, quant, low_bit, dequantize,
                                 config.batch_invariant)
        if config.tensor_parallel_size == 1:
            return runner_args.build(TensorParallel())
        if device.type == "cpu":  # the ranks share the machine's cores
            torch.set_num_threads(max(1, torch.get_num_threads() // config.tensor_parallel_size))
        return ParallelRunner(runner_args, config.tensor_parallel_size)

    def _size_kv_cache(self, device: torch.device, dtype: torch.dtype, layers_per_block: int) -> tuple[int, int, int]:
        """The number of KV blocks, the bytes of one (``layers_per_block``: a KV cache group's size), and the
        step's token budget."""
        config = self.config
        spec = self.runner.model.spec  # rank 0's: it holds the most KV heads, so its blocks are the largest
        block_bytes = bytes_per_block(layers_per_block, config.block_size, spec.local_kv_heads, spec.head_dim, dtype)
        max_num_batched_tokens = config.max_num_batched_tokens or max(DEFAULT_MAX_NUM_BATCHED_TOKENS, config.max_num_seqs)
        num_blocks = config.num_kv_blocks or num_blocks_for_memory(
            config.kv_cache_memory_gb, block_bytes, device, config.gpu_memory_utilization,
            activation_bytes=_activation_bytes(spec, max_num_batched_tokens, config.max_num_seqs),
        )
        return num_blocks, block_bytes, max_num_batched_tokens

    def _set_up_fast_decode(self, device: torch.device, max_model_len: int) -> None:
        """CUDA graphs on CUDA (captured now); compiled layer graphs on the CPU (loaded, or compiled meanwhile)."""
        if self._eager:
            return
        if device.type == "cuda":
            self.runner.capture_decode_graphs(self.config.max_num_seqs, max_model_len)
        elif device.type == "cpu" and self.runner.ops.name in ("torch", "torch-rows"):
            self.runner.compile_decode(self.config.max_num_seqs, cache_dir() / "compiled")

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams,
                    prompt_token_ids: list[int] | None = None) -> None:
        """Queue a request; ``ValueError`` (and nothing queued) if the prompt is invalid.

        ``prompt_token_ids`` skips tokenization (chat passes what its template produced).
        """
        self.add_prepared(self.prepare_request(request_id, prompt, params, prompt_token_ids))

    def prepare_request(self, request_id: str, prompt: PromptType, params: SamplingParams,
                        prompt_token_ids: list[int] | None = None) -> PreparedRequest:
        """Tokenize, validate and compile the request's grammar, touching no engine state: safe to call
        from another thread (a server does, so the engine thread never waits for a compile)."""
        if prompt_token_ids is None:
            text, prompt_token_ids = self.input_processor.process(prompt)
        else:
            self.input_processor.validate(prompt_token_ids)
            text = prompt if isinstance(prompt, str) else None
        for field, tokens in (("logit_bias", params.logit_bias or {}), ("stop_token_ids", params.stop_token_ids)):
            outside = [t for t in tokens if t >= self.vocab_size]
            if outside:
                raise InvalidSamplingParam(field, f"{field} names token {outside[0]}, outside the vocabulary "
                                                  f"[0, {self.vocab_size})")
        self.check_request(len(prompt_token_ids), params.n)
        stop = StopConditions(
            max_tokens=params.max_tokens,
            min_tokens=params.min_tokens,
            stop_token_ids=tuple(params.stop_token_ids),
            eos_token_id=self.eos_token_id,
            ignore_eos=params.ignore_eos,
        )
        now = time.monotonic()
        forks = [fork_id(request_id, index) for index in range(1, params.n)]
        request = Request(request_id, prompt_token_ids, stop, arrival_time=now, fork_ids=forks,
                          skip_prefix_cache=params.prompt_logprobs is not None)
        generators = [None] * params.n
        if params.seed is not None:  # sequence i of a seeded request draws from seed + i
            generators = [torch.Generator(device=self.runtime.device).manual_seed(params.seed + i) for i in range(params.n)]
        matcher = None if params.structured_outputs is None else self.grammars.matcher(params.structured_outputs)
        closes_json = matcher is not None and params.structured_outputs.kind in ("json", "json_object")
        state = RequestState(request_id, text, prompt_token_ids, params, RequestMetrics(now), generators, matcher=matcher,
                             closers=self.grammars.closers() if closes_json else None)
        return PreparedRequest(request, state)

    def check_request(self, num_prompt_tokens: int, n: int = 1, max_new_tokens: int | None = None) -> None:
        """``RequestRejected`` (a ``ValueError`` naming the field) for a request these limits could never run:
        the prompt (plus ``max_new_tokens`` if given) against the context, ``n`` against the seats and blocks.
        Reads only frozen configuration: safe from any thread."""
        self.scheduler.config.check_request(num_prompt_tokens, n, max_new_tokens)

    def add_prepared(self, prepared: PreparedRequest) -> None:
        self.scheduler.add(prepared.request)
        self.output_processor.add(prepared.state, prepared.request)

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, sample, and return an output for every request that got a token."""
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty:
            return []
        result = self.runner.execute(scheduled, self.output_processor.prompt_logprob_ids())
        if result.prompt_logits:
            starts = {item.request_id: item.start_pos for item in scheduled.scheduled}
            self.output_processor.record_prompt_logprobs(result.prompt_logits, starts)
        sample = self.sampler(result.logits, self.output_processor.sampling_rows(result.sampled))
        token_ids = {owner.request_id: [sample.token_ids[row] for row in owner.rows] for owner in result.sampled}
        self._num_prefill_tokens += sum(item.num_tokens for item in scheduled.scheduled if item.num_tokens > 1)
        self._num_generated_tokens += len(sample.token_ids)
        update = self.scheduler.update(scheduled, token_ids)
        self.runner.copy_blocks(update.block_copies)
        self.output_processor.add_forks(update.forked)
        outputs, stopped = self.output_processor.process(result.sampled, sample)
        for seq_id, stop_string in stopped:
            self.scheduler.finish(seq_id, FinishReason.STOP, stop_string)
        return outputs

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request (all its sequences) now and free its blocks; returns its final output (None if unknown)."""
        state = self.output_processor.requests.get(request_id)
        if state is None:
            return None
        for seq in state.sequences:
            self.scheduler.abort(seq.request.request_id)
        return self.output_processor.abort(request_id)

    def shutdown(self) -> None:
        """Release what outlives the object: tensor-parallel worker processes, a decode-graph compiler."""
        if isinstance(self.runner, ParallelRunner):
            self.runner.shutdown()
        elif self.runner.compiled_decode is not None:
            self.runner.compiled_decode.stop()

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def stats(self) -> EngineStats:
        manager = self.scheduler.block_manager
        compiled = getattr(self.runner, "compiled_decode", None)
        return EngineStats(self.scheduler.num_running, self.scheduler.num_waiting, manager.num_used_blocks,
                           manager.num_total_blocks, self.scheduler.num_preemptions,
                           self._num_prefill_tokens, self._num_generated_tokens,
                           self.scheduler.prefix_cache_queries, self.scheduler.prefix_cache_hits,
                           compiled.graphs_ready if compiled else 0, compiled.graphs_total if compiled else 0)

    def check_invariants(self) -> None:
        self.scheduler.block_manager.check_invariants()


def _check_batch_invariant(config: EngineConfig, device: torch.device, kernels: str) -> None:
    """What the batch-invariant mode covers today: the CPU's torch kernel set on one process."""
    if device.type != "cpu":
        raise ValueError(f"batch_invariant runs on the CPU only (device is {device.type}); the GPU's Triton path "
                         "is not batch-invariant yet")
    if kernels != "torch":
        raise ValueError(f"batch_invariant runs the torch kernel set, not kernels={kernels!r}")
    if config.tensor_parallel_size > 1:
        raise ValueError(f"batch_invariant needs tensor_parallel_size=1, got {config.tensor_parallel_size}")


def _activation_bytes(spec, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """A generous bound on one step's activations: a few fp32 copies of the widest layer per token,
    plus fp32 logits and sampling work for every sequence."""
    widest = max(spec.hidden_size, 2 * spec.intermediate_size, (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim)
    return 4 * (8 * max_num_batched_tokens * widest + 4 * max_num_seqs * spec.vocab_size)


def _max_model_len(config: EngineConfig, hf_config) -> int:
    context = getattr(hf_config, "max_position_embeddings", None)
    if config.max_model_len is None:
        if context is None:
            raise ValueError("the model config has no max_position_embeddings; pass max_model_len")
        return context
    if context is not None and config.max_model_len > context:
        raise ValueError(f"max_model_len={config.max_model_len} is longer than the model's context ({context} tokens)")
    return config.max_model_len
