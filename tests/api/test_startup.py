"""A server serves at once and reaches full speed by itself: with an empty cache folder it answers
before its decode graphs are compiled, then switches to them with the same tokens; after
``engine warmup`` a server starts with every graph loaded.

The compiler process is paused (SIGSTOP) while the first request runs, so the order of events is
forced rather than timed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import metric, start_server, stop_server

FULL_SPEED_TIMEOUT_S = 600
REQUEST = {"model": "tiny", "prompt": "The capital of France is", "max_tokens": 24, "temperature": 0.0,
           "ignore_eos": True}


def _compile_worker(server_pid: int) -> int:
    """The server's compiler process (a child running engine.step.compile_worker)."""
    children = [pid for task in Path(f"/proc/{server_pid}/task").iterdir() for pid in (task / "children").read_text().split()]
    for pid in children:  # any thread's: the engine's own thread starts the compiler
        if b"engine.step.compile_worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    raise AssertionError("the server started no compiler process")


def _complete(url: str) -> list[str]:
    response = httpx.post(f"{url}/v1/completions", json={**REQUEST, "logprobs": 1}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["logprobs"]["tokens"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the compiler process through /proc")
def test_a_server_with_an_empty_cache_answers_before_its_graphs_compile(tiny_model_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    server = start_server(tiny_model_factory("llama"), tmp_path / "server.log", "--served-model-name", "tiny",
                          "--max-model-len", "128", "--dtype", "float32")
    try:
        worker = _compile_worker(server.process.pid)
        os.kill(worker, signal.SIGSTOP)
        assert metric(server, "engine:graphs_total") == 2  # a batch of one, and of more
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        eager = _complete(server.url)
        assert metric(server, "engine:compiled_graphs") == 0  # answered while nothing was compiled
        os.kill(worker, signal.SIGCONT)
        deadline = time.monotonic() + FULL_SPEED_TIMEOUT_S
        while metric(server, "engine:compiled_graphs") < 2:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.5)  # polling for a state, bounded by the deadline
        assert _complete(server.url) == eager
        assert "full speed" in server.log()
    finally:
        stop_server(server)


def test_engine_warmup_fills_the_cache_and_a_server_starts_at_full_speed(tiny_model_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    model = str(tiny_model_factory("llama"))
    done = subprocess.run([sys.executable, "-m", "engine", "warmup", model, "--dtype", "float32"],
                          capture_output=True, text=True, timeout=FULL_SPEED_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warm: 2 decode graphs" in done.stderr
    # other pool and batch limits: the graphs do not depend on them
    server = start_server(Path(model), tmp_path / "server.log", "--served-model-name", "tiny", "--dtype", "float32",
                          "--max-model-len", "128", "--num-kv-blocks", "64", "--max-num-seqs", "8")
    try:
        assert metric(server, "engine:compiled_graphs") == metric(server, "engine:graphs_total") == 2
        assert "compiling" not in server.log()
        assert len(_complete(server.url)) == 24
    finally:
        stop_server(server)
