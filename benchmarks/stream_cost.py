"""The server's CPU time per streamed token, for short and long streams: output work must not grow
with the length of a stream.

A tiny random-weight Llama (2 layers, the default model's tokenizer, an 8k context) served by
``engine serve --enforce-eager`` so the model's own cost is small and constant; one streamed
/v1/completions request at a time (greedy, ``ignore_eos``). For each length it reads the CPU
seconds of the server's event-loop thread (HTTP, SSE, routing outputs) and of the whole process
from /proc before and after (as many requests of each length as make the longest one), and
reports medians per token.

    python -m benchmarks.stream_cost --out benchmarks/results/stream_cost.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from .common import free_port, median, run_info
from .vs_llama_cpp import running


def make_model(folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from engine.model.loader.resolve import default_model_folder

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         initializer_range=0.02, eos_token_id=2, bos_token_id=1, architectures=["LlamaForCausalLM"])
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for file in default_model_folder().iterdir():
        if file.name not in ("config.json", "model.safetensors"):
            shutil.copy(file, folder / file.name)


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU seconds run by one thread of a process (``schedstat``: nanoseconds, where ``stat`` counts
    10 ms ticks), or by all its threads."""
    tids = [tid] if tid is not None else [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    total = 0
    for thread in tids:
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            total += int(Path(f"/proc/{pid}/task/{thread}/schedstat").read_text().split()[0])
    return total / 1e9


def stream_once(url: str, num_tokens: int) -> int:
    body = {"prompt": "Hello", "max_tokens": num_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    events = 0
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            events += line.startswith("data:")
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stream_cost.json"))
    args = parser.parse_args()
    results = {**run_info(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        make_model(folder)
        port = free_port()
        command = [sys.executable, "-m", "engine", "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
                   "--max-model-len", str(max(args.lengths) + 64), "--enforce-eager"]
        with running(command, port, Path(tmp) / "server.log", 300) as url:
            pid = int(subprocess.check_output(["pgrep", "-f", f"engine serve .*--port {port}"]).split()[0])
            stream_once(url, 16)  # warm-up
            for length in args.lengths:
                loop_ms, process_ms = [], []
                streams = max(1, max(args.lengths) // length)  # the same number of tokens at every length
                for _ in range(args.repeats):
                    loop_before, process_before = cpu_seconds(pid, pid), cpu_seconds(pid)
                    events = sum(stream_once(url, length) for _ in range(streams))
                    tokens = streams * length
                    loop_ms.append(1e3 * (cpu_seconds(pid, pid) - loop_before) / tokens)
                    process_ms.append(1e3 * (cpu_seconds(pid) - process_before) / tokens)
                run = {"tokens": length, "streams": streams, "events": events, "event_loop_cpu_ms_per_token": median(loop_ms),
                       "process_cpu_ms_per_token": median(process_ms)}
                results["runs"].append(run)
                print(f"{length:5d} tokens: event loop {run['event_loop_cpu_ms_per_token']:.3f} ms/token, "
                      f"whole server {run['process_cpu_ms_per_token']:.3f} ms/token", flush=True)
    first, last = results["runs"][0], results["runs"][-1]
    results["event_loop_ratio_longest_over_shortest"] = (last["event_loop_cpu_ms_per_token"]
                                                         / first["event_loop_cpu_ms_per_token"])
    print(f"event loop CPU per token, {last['tokens']} over {first['tokens']} tokens: "
          f"{results['event_loop_ratio_longest_over_shortest']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
