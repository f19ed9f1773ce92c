"""The GPU lease scripts must not fail for a typo: run the kernel benchmark's small grid here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_kernel_benchmark_runs_and_writes_json_and_plot(tmp_path):
    out, plot = tmp_path / "kernels.json", tmp_path / "kernels.png"
    done = subprocess.run([sys.executable, "-m", "benchmarks.kernels", "--grid", "small", "--out", str(out),
                           "--plot", str(plot)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert {e["kernel"] for e in results["kernels"]} >= {"paged_attention_decode", "paged_attention_prefill",
                                                         "store_kv", "rms_norm", "silu_and_mul", "rotary_embedding"}
    assert plot.stat().st_size > 0
    assert (ROOT / "benchmarks" / "gpu_suite.sh").read_text().count("python3 -m benchmarks.") == 2


def _run(module: str, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def test_throughput_benchmark_compares_with_transformers_in_one_run(tiny_model_factory, tmp_path):
    out = tmp_path / "throughput.json"
    _run("throughput", "--model", str(tiny_model_factory("llama")), "--num-prompts", "4", "--input-len", "8",
         "--output-len", "5", "--hf-batch-sizes", "1", "4", "--out", str(out), "--plot", str(tmp_path / "t.png"))
    results = json.loads(out.read_text())
    assert results["engine"]["output_tokens_per_s"] > 0 and results["commit"] and results["machine"]
    assert results["command"].startswith("python -m benchmarks.throughput --model ")
    assert [run["batch_size"] for run in results["transformers"]] == [1, 4]
    assert results["speedup_vs_sequential"] > 0 and results["speedup_vs_best_batch"] > 0


def test_step_overhead_benchmark_reports_each_batch_size(tiny_model_factory, tmp_path):
    out = tmp_path / "overhead.json"
    _run("step_overhead", "--model", str(tiny_model_factory("llama")), "--batch-sizes", "1", "4",
         "--input-len", "8", "--steps", "4", "--out", str(out))
    runs = json.loads(out.read_text())["runs"]
    assert [run["batch_size"] for run in runs] == [1, 4]
    for run in runs:  # the model's share is measured inside the step, so it can never exceed it
        assert 0 < run["model_ms_p50"] <= run["step_ms_p50"]


def test_stream_cost_benchmark_measures_the_server_per_token(tmp_path):
    out = tmp_path / "stream_cost.json"
    _run("stream_cost", "--lengths", "8", "32", "--repeats", "1", "--out", str(out))
    results = json.loads(out.read_text())
    assert [run["tokens"] for run in results["runs"]] == [8, 32]
    assert [run["streams"] for run in results["runs"]] == [4, 1]
    assert all(run["event_loop_cpu_ms_per_token"] > 0 for run in results["runs"])
    assert results["event_loop_ratio_longest_over_shortest"] > 0


def test_mask_cost_benchmark_times_masks_inside_the_step(tiny_model_factory, tmp_path):
    out = tmp_path / "mask_cost.json"
    _run("mask_cost", "--model", str(tiny_model_factory("llama")), "--batch", "4", "--notes", "40", "--steps", "5",
         "--enforce-eager", "--max-model-len", "512", "--out", str(out))
    results = json.loads(out.read_text())
    assert results["steps_measured"] == {"constrained": 5, "unconstrained": 5}
    assert 0 < results["median_mask_ms"] < results["median_step_ms"]["constrained"]


def test_schema_validity_benchmark_checks_every_output(tiny_model_factory, tmp_path):
    out = tmp_path / "schema_validity.json"
    _run("schema_validity", "--model", str(tiny_model_factory("llama")), "--schemas", "3", "--max-tokens", "300",
         "--concurrency", "3", "--max-model-len", "512", "--enforce-eager", "--out", str(out))
    results = json.loads(out.read_text())
    assert len(results["results"]) == 3
    for name in ("plain", "streamed"):  # a random model: only the grammar makes its outputs valid
        finished = [r for r in results["results"] if r[name]["finish_reason"] == "stop"]
        assert finished and all(r[name]["valid"] for r in finished)


def test_agent_loop_benchmark_reports_cache_hits_per_turn(tiny_model_factory, tmp_path):
    out = tmp_path / "agent_loop.json"
    _run("agent_loop", "--model", str(tiny_model_factory("llama")), "--turns", "2", "--result-words", "8", "--max-tokens", "32",
         "--engine-args=--enforce-eager --max-model-len 512", "--out", str(out), "--plot", str(tmp_path / "a.png"),
         "--logs", str(tmp_path / "logs"))
    results = json.loads(out.read_text())
    runs = {(run["server"], run["api"]): run for run in results["runs"]}
    assert set(runs) == {(server, api) for server in ("prefix caching", "no prefix caching")
                         for api in ("responses", "messages")}
    for (server, _), run in runs.items():
        assert [turn["turn"] for turn in run["turns"]] == [1, 2]
        prompts = [turn["prompt_tokens"] for turn in run["turns"]]
        assert prompts == sorted(prompts) and prompts[0] < prompts[-1]  # the conversation grows each turn
        if server == "no prefix caching":
            assert all(turn["cached_tokens"] == 0 for turn in run["turns"])
        else:  # every later turn reuses the earlier turns' blocks
            assert all(turn["cached_tokens"] >= prompts[0] // 2 for turn in run["turns"][1:])
    assert (tmp_path / "a.png").stat().st_size > 0


def test_step_bytes_of_the_default_gguf_stay_within_its_tensor_bytes(tmp_path):
    """A one-sequence decode step of the default model reads its Q4_1/Q8_0 blocks in torch's int4/int8
    layouts: no more bytes than the file holds (a dense fallback would read ~3x)."""
    from engine.model.loader.resolve import default_gguf_file

    out = tmp_path / "bytes.json"
    subprocess.run([sys.executable, "-m", "benchmarks.step_bytes", "--model", str(default_gguf_file()), "--out",
                    str(out)], check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    assert 0.5 < result["ratio"] <= 1.15, result
