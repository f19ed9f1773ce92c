"""benchmarks/serve.py against real servers: ours (the shared fixture) and the transformers baseline."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from conftest import STARTUP_TIMEOUT_S, free_port, wait_until_ready

ROOT = Path(__file__).resolve().parents[2]


def _load(url: str, label: str, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.serve", "--base-url", url, "--label", label,
                           "--concurrency", "1", "3", "--num-prompts", "4", "--input-len", "12", "--output-len", "6",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def _check(results: dict) -> None:
    assert [run["concurrency"] for run in results["runs"]] == [1, 3]
    for run in results["runs"]:
        assert run["failed"] == 0, run
        assert run["requests"] == 4 and run["output_tokens_per_s"] > 0
        assert all(math.isfinite(run[key]) and run[key] > 0 for key in ("ttft_ms_p50", "itl_ms_p50", "tpot_ms_p99"))


def test_serve_benchmark_against_our_server_and_the_transformers_baseline(server, tiny_model_factory, tmp_path):
    ours = _load(server.url, "engine", tmp_path / "engine.json")
    _check(ours)
    assert ours["model"] == server.model

    port = free_port()
    log_path = tmp_path / "hf_server.log"
    with open(log_path, "w") as log:
        baseline = subprocess.Popen([sys.executable, "-m", "benchmarks.hf_server", "--model",
                                     str(tiny_model_factory("llama")), "--port", str(port)],
                                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/v1/models", baseline, log_path, STARTUP_TIMEOUT_S)
        _check(_load(url, "transformers", tmp_path / "hf.json"))
    finally:
        baseline.terminate()
        baseline.wait(timeout=30)

    plot = tmp_path / "serve.png"
    done = subprocess.run([sys.executable, "-m", "benchmarks.serve", "--plot", str(plot), str(tmp_path / "engine.json"),
                           str(tmp_path / "hf.json")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert plot.stat().st_size > 0
