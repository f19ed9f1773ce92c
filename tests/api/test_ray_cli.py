"""``engine serve --ray``: replicas on a Ray instance of its own (bound to 127.0.0.1), stopped with the server."""

from __future__ import annotations

import re
import subprocess

import httpx
from conftest import start_server, stop_server


def ray_processes() -> set[str]:
    """The pids of Ray's raylet and GCS server (by process name: a command line may be cut at $COLUMNS)."""
    listing = subprocess.run(["ps", "-e", "-o", "pid=,comm="], capture_output=True, text=True, check=True).stdout
    return {pid for pid, name in (line.split(None, 1) for line in listing.splitlines())
            if name.strip() in ("raylet", "gcs_server")}


def test_engine_serve_ray_runs_replicas_and_stops_ray_with_it(tiny_model_factory, tmp_path):
    before = ray_processes()
    server = start_server(tiny_model_factory("llama"), tmp_path / "ray.log", "--ray", "--num-replicas", "2",
                          "--served-model-name", "tiny", "--enforce-eager", "--max-model-len", "128",
                          "--kv-cache-memory-gb", "0.25")
    try:
        replicas = set()
        for _ in range(40):
            answer = httpx.post(f"{server.url}/v1/completions", timeout=60,
                                json={"model": "tiny", "prompt": "Hi", "max_tokens": 2})
            assert answer.status_code == 200, answer.text
            replicas.add(answer.headers["x-engine-replica"])
            if len(replicas) == 2:
                break
        assert len(replicas) == 2
        assert ray_processes() - before  # this server's own Ray
        assert re.search(r"Ray at 127\.0\.0\.1:\d+", server.log())  # on loopback only
    finally:
        stop_server(server)
    assert server.process.returncode == 0, server.log()[-2000:]
    assert not ray_processes() - before, "Ray's processes outlived the server"
