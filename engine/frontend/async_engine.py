"""``AsyncLLMEngine``: the engine stepping in a background thread, serving many asyncio callers.

One thread owns the ``LLMEngine`` (the single writer of scheduler and cache state). Callers
validate and tokenize on their own side (``prepare_request``), then hand requests and aborts
to the thread through an inbox that it drains before every step, so an abort frees its blocks
within one step. Each step's outputs go back to the event loop in one call and are routed to
per-request queues. The model forward releases the GIL, so the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, AsyncIterator, Callable

from engine.config import EngineConfig
from engine.processing.input_processor import PromptType
from engine.processing.outputs import RequestOutput
from engine.processing.token_bytes import TokenBytes
from engine.sampling.sampling_params import SamplingParams, StructuredOutputsParams
from engine.step.llm_engine import EngineStats, LLMEngine, PreparedRequest
from engine.step.parallel_runner import RankFailed

logger = logging.getLogger(__name__)

OutputListener = Callable[[RequestOutput], None]
STATS_LOG_INTERVAL_S = 10.0


class EngineDeadError(RuntimeError):
    """The engine loop has stopped; no request can be served."""


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._inbox: list[tuple[str, object]] = []
        self._wakeup = threading.Condition()
        self._streams: dict[str, asyncio.Queue] = {}
        self._listeners: list[OutputListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopping = False

    @classmethod
    def from_config(cls, config: EngineConfig) -> "AsyncLLMEngine":
        """Build the engine on the thread that will step it, and wait for it to be ready.

        torch's OpenMP pool belongs to the thread that first runs a parallel op: loading the
        model on one thread and stepping on another leaves two pools, and on 2 cores every
        parallel op of the second ran 1.5-2x slower (benchmarks/NOTES.md).
        """
        built: dict[str, object] = {}
        ready = threading.Event()

        def build_then_run() -> None:
            try:
                built["engine"] = engine = cls(LLMEngine(config))
            except BaseException as err:  # handed to the caller below
                built["error"] = err
                return
            finally:
                ready.set()
            engine._started.wait()
            if not engine._stopping:
                engine._run()

        thread = threading.Thread(target=build_then_run, name="engine-loop", daemon=True)
        thread.start()
        ready.wait()
        if "error" in built:
            raise built["error"]
        engine = built["engine"]
        engine._thread = thread
        return engine

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.runtime.max_model_len

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def token_bytes(self) -> TokenBytes:
        """Each token's own text and bytes (cached), as logprobs report them."""
        return self.engine.output_processor.token_bytes

    def check_request(self, num_prompt_tokens: int, n: int = 1, max_new_tokens: int | None = None) -> None:
        """See ``LLMEngine.check_request``: the limits, checked on the caller's thread."""
        self.engine.check_request(num_prompt_tokens, n, max_new_tokens)

    async def compile_grammar(self, params: StructuredOutputsParams) -> None:
        """Compile (and cache) a grammar off the event loop; ``InvalidSamplingParam`` if it cannot be."""
        await asyncio.to_thread(self.engine.grammars.matcher, params)

    def render_chat(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> tuple[str, list[int]]:
        """The model's chat template applied to ``messages``: its text and token ids, not length-checked.
        Runs on the caller's thread (tokenizing reads only the tokenizer)."""
        return self.engine.input_processor.render_chat(messages, **template_kwargs)

    @property
    def is_running(self) -> bool:
        return self._started.is_set() and self._thread.is_alive() and not self._stopping

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def add_output_listener(self, listener: OutputListener) -> None:
        """Called on the event loop for every output of every request (metrics, logs)."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Start the step thread; outputs are delivered on the running event loop."""
        if self._started.is_set():
            return
        self._loop = asyncio.get_running_loop()
        if self._thread is None:  # built directly from an LLMEngine: step on a new thread
            self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
            self._thread.start()
        self._started.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Abort what is still in flight and stop the thread."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._started.set()  # a thread still waiting to start sees the stop and returns
        if self._thread is not None:
            self._thread.join(timeout)

    async def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams,
        request_id: str,
        prompt_token_ids: list[int] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Outputs of one request as it progresses (cumulative text); the last has ``finished``.

        Raises ``ValueError`` before the first output for an invalid request. Leaving the
        iteration early (a client gone, a cancelled task) aborts the request.
        """
        if not self.is_running:
            raise EngineDeadError("the engine is not running")
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if sampling_params.structured_outputs is None:
            prepared = self.engine.prepare_request(request_id, prompt, sampling_params, prompt_token_ids)
        else:  # compiling a grammar can take a while: off the event loop (and off the engine thread)
            prepared = await asyncio.to_thread(self.engine.prepare_request, request_id, prompt, sampling_params,
                                               prompt_token_ids)
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = queue
        self._submit("add", prepared)
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Stop the request and free its KV blocks at the start of the next step."""
        self._submit("abort", request_id)

    def _submit(self, kind: str, payload: object) -> None:
        with self._wakeup:
            self._inbox.append((kind, payload))
            self._wakeup.notify()

    # ---- the engine thread ----

    def _run(self) -> None:
        last_log, last_stats = time.monotonic(), self.engine.stats()
        while True:
            with self._wakeup:
                while not self._inbox and not self._stopping and not self.engine.has_unfinished_requests():
                    self._wakeup.wait()
                commands, self._inbox = self._inbox, []
                stopping = self._stopping
            self._apply(commands)
            if stopping:
                self._abort_all(EngineDeadError("the server is shutting down"))
                self.engine.shutdown()
                return
            if self.engine.has_unfinished_requests():
                try:
                    outputs = self.engine.step()
                except RankFailed as err:  # a tensor-parallel rank is gone: this engine cannot go on
                    logger.error("%s", err)
                    self._stopping = True
                    self._abort_all(EngineDeadError(str(err)))
                    self.engine.shutdown()
                    return
                except Exception as err:  # a bug or a device fault: fail the requests in flight, keep serving
                    logger.exception("engine step failed; aborting the requests in flight")
                    self._abort_all(err)
                    continue
                self._loop.call_soon_threadsafe(self._dispatch, outputs)
            if time.monotonic() - last_log > STATS_LOG_INTERVAL_S:
                stats = self.engine.stats()
                _log_stats(last_stats, stats, time.monotonic() - last_log)
                last_log, last_stats = time.monotonic(), stats

    def _apply(self, commands: list[tuple[str, object]]) -> None:
        for kind, payload in commands:
            if kind == "add":
                prepared: PreparedRequest = payload
                try:
                    self.engine.add_prepared(prepared)
                except ValueError as err:
                    self._loop.call_soon_threadsafe(self._fail, prepared.state.request_id, err)
            elif (output := self.engine.abort(payload)) is not None:
                logger.info("aborted request %s", payload)
                self._loop.call_soon_threadsafe(self._dispatch, [output])  # listeners see the end

    def _abort_all(self, error: BaseException) -> None:
        for request_id in list(self.engine.output_processor.requests):
            self.engine.abort(request_id)
            self._loop.call_soon_threadsafe(self._fail, request_id, error)

    # ---- back on the event loop ----

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            for listener in self._listeners:
                listener(output)
            queue = self._streams.get(output.request_id)
            if queue is not None:
                queue.put_nowait(output)

    def _fail(self, request_id: str, error: BaseException) -> None:
        queue = self._streams.get(request_id)
        if queue is not None:
            queue.put_nowait(error)


def _log_stats(before: EngineStats, now: EngineStats, elapsed: float) -> None:
    logger.info(
        "prefill %.1f tokens/s, generation %.1f tokens/s, running %d, waiting %d, KV cache %.1f%% of %d blocks",
        (now.num_prefill_tokens - before.num_prefill_tokens) / elapsed,
        (now.num_generated_tokens - before.num_generated_tokens) / elapsed,
        now.num_running, now.num_waiting, 100.0 * now.num_used_blocks / now.num_total_blocks, now.num_total_blocks,
    )
