"""``ModelRunner``'s interface over tensor-parallel ranks: rank 0 in the engine's process, ranks 1..N-1 in
worker processes (torch.multiprocessing spawn), gloo on CPUs and NCCL on CUDA.

The scheduler runs once, here. Each call (allocate the KV cache, execute a step, copy blocks) is sent
to every worker over its pipe and run by all ranks alike, so the sharded model's collectives line up;
only rank 0's logits are sampled. A rank that dies is noticed at once (its pipe closes, the
collectives fail) or at worst after the collectives' timeout, and ends the engine with an error
naming it; ``shutdown`` reaps every worker, and a worker whose engine process is gone exits by itself.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.kernels import kernel_set
from engine.model.loader import ModelSource
from engine.model.parallel import TensorParallel
from engine.model.quant.format import QuantFormat
from engine.model.quant.lowbit import LowBitKernels
from engine.scheduler import KVCacheGroups

from .model_runner import ModelRunner

logger = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT_S = 30.0  # a collective waiting longer than this for a rank fails the step
READY_TIMEOUT_S = 600.0  # loading the weights in every worker
PARENT_POLL_S = 1.0  # how often an idle worker checks that its engine process is still there


class RankFailed(RuntimeError):
    """A tensor-parallel rank died or failed; the engine cannot go on."""


@dataclass(frozen=True)
class RunnerArgs:
    """What every rank builds its ``ModelRunner`` from (picklable: sent to spawned workers)."""

    source: ModelSource
    hf_config: Any
    device: torch.device
    dtype: torch.dtype
    kernels: str
    quant: QuantFormat | None
    low_bit: LowBitKernels | None
    dequantize: bool
    batch_invariant: bool = False

    def build(self, tp: TensorParallel) -> ModelRunner:
        device = torch.device(self.device.type, tp.rank) if self.device.type == "cuda" else self.device
        return ModelRunner(self.source, self.hf_config, device, self.dtype, kernel_set(self.kernels), self.quant,
                           low_bit=self.low_bit, dequantize=self.dequantize, tp=tp,
                           batch_invariant=self.batch_invariant)


class ParallelRunner:
    def __init__(self, args: RunnerArgs, size: int) -> None:
        backend = "nccl" if args.device.type == "cuda" else "gloo"
        if backend == "nccl" and torch.cuda.device_count() < size:
            raise ValueError(f"tensor_parallel_size={size} needs {size} GPUs; this machine has "
                             f"{torch.cuda.device_count()}")
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        context = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.workers = []
        for rank in range(1, size):
            here, there = context.Pipe()
            worker = context.Process(target=_worker_main, name=f"engine-tp-rank-{rank}", daemon=True,
                                     args=(rank, size, backend, init_method, args, there, os.getpid()))
            worker.start()
            there.close()
            self.pipes.append(here)
            self.workers.append(worker)
        try:
            _init_group(backend, init_method, 0, size)
            self.local = args.build(TensorParallel(0, size))
            for rank, pipe in enumerate(self.pipes, start=1):
                self._receive(rank, pipe, READY_TIMEOUT_S)
        except BaseException:
            self.shutdown()
            raise
        self.model = self.local.model
        logger.info("tensor parallel: %d ranks (%s), workers %s", size, backend, [w.pid for w in self.workers])

    @property
    def kv_cache(self):
        return self.local.kv_cache

    def allocate_kv_cache(self, groups: KVCacheGroups, num_blocks: int, block_size: int) -> None:
        self._on_all("allocate_kv_cache", groups, num_blocks, block_size)

    def execute(self, output, prompt_logprob_ids=frozenset()):
        return self._on_all("execute", output, set(prompt_logprob_ids))

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        if copies:
            self._on_all("copy_blocks", copies)

    def _on_all(self, method: str, *args):
        """Run ``method`` on every rank; rank 0's result."""
        self._check_workers()
        for rank, pipe in enumerate(self.pipes, start=1):
            try:
                pipe.send((method, args))
            except OSError:
                raise self._failure(rank) from None
        try:
            result = getattr(self.local, method)(*args)
        except RuntimeError as err:  # a collective failed: say which rank went away
            raise self._failure(None, err) from err
        self._check_workers()
        return result

    def _check_workers(self) -> None:
        for rank, (pipe, worker) in enumerate(zip(self.pipes, self.workers), start=1):
            if not worker.is_alive():
                raise self._failure(rank)
            if pipe.poll():  # a worker only speaks to report a failure
                self._receive(rank, pipe, 0.0)

    def _receive(self, rank: int, pipe: Connection, timeout: float) -> None:
        worker, deadline = self.workers[rank - 1], time.monotonic() + timeout
        while not pipe.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
            if not worker.is_alive() or time.monotonic() >= deadline:
                raise self._failure(rank)
        try:
            kind, detail = pipe.recv()
        except (EOFError, OSError):
            raise self._failure(rank) from None
        if kind == "error":
            raise RankFailed(f"tensor-parallel rank {rank} failed: {detail}")

    def _failure(self, rank: int | None, cause: BaseException | None = None) -> RankFailed:
        if cause is not None:  # a peer's socket closes as it dies, a moment before it can be reaped
            deadline = time.monotonic() + PARENT_POLL_S
            for worker in self.workers:
                worker.join(max(0.0, deadline - time.monotonic()))
        dead = [(r, w) for r, w in enumerate(self.workers, start=1) if not w.is_alive()]
        if rank is not None and not dead:
            dead = [(rank, self.workers[rank - 1])]
        if dead:
            names = ", ".join(f"rank {r} (pid {w.pid}, exit code {w.exitcode})" for r, w in dead)
            return RankFailed(f"tensor-parallel {names} stopped; the engine cannot go on")
        return RankFailed(f"a tensor-parallel collective failed: {cause}")

    def shutdown(self) -> None:
        """Stop every worker (asked first, then terminated, then killed) and leave the process group."""
        for pipe in self.pipes:
            try:
                pipe.send(("shutdown", ()))
            except OSError:
                pass
        for worker in self.workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for pipe in self.pipes:
            pipe.close()
        self.pipes, self.workers = [], []
        if dist.is_initialized():
            dist.destroy_process_group()


def _init_group(backend: str, init_method: str, rank: int, size: int) -> None:
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))


def _worker_main(rank: int, size: int, backend: str, init_method: str, args: RunnerArgs, pipe: Connection,
                 parent_pid: int) -> None:
    """A worker rank: build the shard, then run what rank 0 sends until told to stop or orphaned."""
    try:
        if args.device.type == "cpu":  # the ranks share the machine's cores
            torch.set_num_threads(max(1, torch.get_num_threads() // size))
        else:
            torch.cuda.set_device(rank)
        _init_group(backend, init_method, rank, size)
        runner = args.build(TensorParallel(rank, size))
        pipe.send(("ready", None))
        while True:
            if not pipe.poll(PARENT_POLL_S):
                if os.getppid() != parent_pid:  # the engine's process is gone
                    return
                continue
            method, call_args = pipe.recv()
            if method == "shutdown":
                return
            getattr(runner, method)(*call_args)
    except (EOFError, OSError, KeyboardInterrupt):
        return
    except BaseException as err:  # reported to rank 0, which ends the engine with it
        try:
            pipe.send(("error", f"{type(err).__name__}: {err}"))
        except OSError:
            pass
        raise


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
