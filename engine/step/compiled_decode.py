"""The CPU decode step through compiled layer graphs, which arrive while the engine already serves.

At start-up every graph the step needs (``layer_graphs``: one per kind of layer and batch range)
is looked up in the cache folder; those present are loaded at once (milliseconds). The rest are
compiled by a worker process (``compile_worker``) while steps run eagerly, and each batch range
switches to its graphs between two steps, once all of them are loaded. A step reads its range's
graphs once, so a step never mixes paths, and a request in flight simply continues on the faster
one. ``graphs_ready`` of ``graphs_total`` tells how far it has come (the server's ``/metrics``).

A compiled step runs the embedding and the final norm eagerly and calls each layer's graph with
the layer's weights and the step's tensors: no tracing, no guards, one call into compiled code per
layer. The first layer gets a zero residual where the eager model passes none (``x + 0`` is ``x``).
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

from engine.kernels import cpu as cpu_kernels
from engine.model.architectures.decoder import LayerKV
from engine.model.forward_batch import ForwardBatch

from .layer_graphs import LayerGraph, StepShapes, batch_ranges, layer_tensors, load_package, meta_copy, structure_digest

logger = logging.getLogger(__name__)


class CompiledDecode:
    def __init__(self, model: torch.nn.Module, kv_layers: list[LayerKV], max_num_seqs: int,
                 folder: Path, min_rows: int = 1) -> None:
        """Load the graphs ``folder`` holds and start compiling the others in the background. ``min_rows``: the
        fewest rows a graph takes (``batch_ranges``); a smaller step runs padded with copies of its last row."""
        self.model, self.kv_layers, self.min_rows = model, kv_layers, min_rows
        started = time.monotonic()
        layers = model.model.layers
        k_cache = kv_layers[0][0]
        step = StepShapes(model.spec.hidden_size, k_cache.dtype,
                          (tuple(model.cos_sin_cache.shape), model.cos_sin_cache.dtype), tuple(k_cache.shape[1:]))
        self.ranges = batch_ranges(layers, max_num_seqs, min_rows)
        self._starts = [r.start for r in self.ranges]
        kinds: dict[str, torch.nn.Module] = {}  # structure digest -> one meta copy
        self._layer_kinds: list[str] = []
        for layer in layers:
            structure = meta_copy(layer)
            digest = structure_digest(structure)
            kinds.setdefault(digest, structure)
            self._layer_kinds.append(digest)
        # per range, per kind: its graph (ranges in order, so the worker compiles small batches first)
        self._graphs = [{kind: LayerGraph.describe(structure, kind, step, batch, folder) for kind, structure in kinds.items()}
                        for batch in self.ranges]
        self._layer_tensors = [list(layer_tensors(layer).values()) for layer in layers]
        self._steps: list[list[Callable] | None] = [None] * len(self.ranges)  # per range: each layer's graph call
        self._runners: dict[Path, object] = {}  # loaded packages, kept alive
        self.graphs_total = sum(len(graphs) for graphs in self._graphs)
        self.error: str | None = None  # why compiling stopped short, if it did
        self._process: subprocess.Popen | None = None
        self._done = threading.Event()
        missing = [graph for graphs in self._graphs for graph in graphs.values() if not graph.path.is_file()]
        if len(missing) < self.graphs_total:
            cpu_kernels.load()  # the graphs call the C++ attention (built with the first ones)
            for graph in (g for graphs in self._graphs for g in graphs.values() if g.path.is_file()):
                self._install(graph)
        if not missing:
            self._done.set()
            logger.info("decode step: %d compiled graphs loaded from %s in %.2f s", self.graphs_total, folder,
                        time.monotonic() - started)
            return
        logger.info("decode step: compiling %d of %d graphs in the background (batch ranges %s; about %d s on this "
                    "machine's first start, then cached in %s); steps run eagerly until then", len(missing),
                    self.graphs_total, ", ".join(r.describe() for r in self.ranges), 15 * len(missing), folder)
        job = Path(tempfile.mkdtemp(prefix="engine-compile-"))
        self._process = _start_worker(missing, job, folder / "inductor")
        weakref.finalize(self, _stop, self._process)  # also at exit: no worker outlives the engine's process
        threading.Thread(target=self._watch, args=(self._process, missing, job, started), name="engine-compile-watch",
                         daemon=True).start()

    @property
    def graphs_ready(self) -> int:
        return len(self._runners)

    @property
    def full_speed(self) -> bool:
        return self.graphs_ready == self.graphs_total

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every graph is loaded or compilation failed; True if all are loaded."""
        self._done.wait(timeout)
        return self.full_speed

    def stop(self) -> None:
        """Stop compiling (the worker process); graphs already loaded stay in use."""
        if self._process is not None:
            _stop(self._process)

    def run(self, batch: ForwardBatch) -> torch.Tensor | None:
        """Hidden states ``[num_seqs, hidden]`` of a decode-only step, or None while its range is not compiled."""
        input_ids = batch.input_ids
        if input_ids.shape[0] < self.min_rows:
            hidden = self.run(batch.padded(self.min_rows))
            return None if hidden is None else hidden[: input_ids.shape[0]]
        steps = self._steps[bisect.bisect_right(self._starts, input_ids.shape[0]) - 1]
        if steps is None:
            return None
        body = self.model.model
        hidden = body.embed_tokens(input_ids)
        residual = torch.zeros_like(hidden)
        shared = (batch.positions, self.model.cos_sin_cache, self.model.local_cos_sin_cache)
        groups = [(meta.slot_mapping, meta.block_tables, meta.seq_lens) for meta in batch.attention]
        for call, tensors, (k_cache, v_cache, group) in zip(steps, self._layer_tensors, self.kv_layers):
            hidden, residual = call([*tensors, hidden, residual, *shared, *groups[group], k_cache, v_cache])
        return body.norm(hidden, residual)[0]

    def _install(self, graph: LayerGraph) -> None:
        """Load a package; a range switches over once every kind of layer has its graph."""
        self._runners[graph.path] = load_package(graph.path)
        for index, graphs in enumerate(self._graphs):
            if self._steps[index] is None and all(g.path in self._runners for g in graphs.values()):
                self._steps[index] = [self._runners[graphs[kind].path].boxed_run for kind in self._layer_kinds]

    def _watch(self, process: subprocess.Popen, graphs: list[LayerGraph], job: Path, started: float) -> None:
        try:
            for line in process.stdout:
                graph = graphs[int(line)]
                if not self._runners:
                    cpu_kernels.load()
                self._install(graph)
                logger.info("decode step: graph for batches %s ready after %.1f s (%d/%d)", graph.batch.describe(),
                            time.monotonic() - started, self.graphs_ready, self.graphs_total)
                if self.full_speed:
                    logger.info("decode step: full speed, all %d graphs ready in %.1f s", self.graphs_total,
                                time.monotonic() - started)
            if process.wait() > 0:  # < 0: stopped by a signal, ours
                lines = (job / "worker.log").read_text().strip().splitlines()
                self.error = lines[-1] if lines else f"exit code {process.returncode}"
                logger.warning("decode step: compiling failed (%s; log: %s); steps stay eager where no graph is ready",
                               self.error, job / "worker.log")
                return
            shutil.rmtree(job, ignore_errors=True)
        except Exception as err:  # a package that does not load: serve on, eagerly, and say why
            self.error = repr(err)
            logger.exception("decode step: loading a compiled graph failed; steps stay eager where none is ready")
        finally:
            self._done.set()


def _start_worker(graphs: list[LayerGraph], job: Path, inductor_cache: Path) -> subprocess.Popen:
    """The compiler process; inductor's own cache goes beside the packages unless the user chose one."""
    torch.save(graphs, job / "job.pt")
    env = {"TORCHINDUCTOR_CACHE_DIR": str(inductor_cache), **os.environ}
    with open(job / "worker.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "engine.step.compile_worker", str(job / "job.pt")], env=env,
                                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
