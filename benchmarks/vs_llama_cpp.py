"""Our server against llama.cpp's llama-server, same model, same machine, same prompts, one run.

For each concurrency, llama-server is started with as many slots (``-np``, 512 tokens of context
each, as measured) and both servers get the load of benchmarks/serve.py: streamed
/v1/completions, token-id prompts (llama-server takes a list of ids as the prompt, as is, no BOS
added), greedy, ``ignore_eos``. Which server runs first alternates between concurrencies (llama.cpp
first at the first one), so neither always gets the cooler machine; the order is recorded. Our
server stays up for the whole run; an idle server waits on a condition and takes no CPU.

    python -m benchmarks.vs_llama_cpp --concurrency 1 32 \
        --out benchmarks/results/vs_llama_cpp.json --plot benchmarks/results/vs_llama_cpp.png

``--gguf`` is llama.cpp's file (default: the default model's GGUF); ``--model`` is ours (default:
the default model, converted from that same GGUF). Extra flags for ``engine serve`` go in one
string: ``--engine-args="--dtype float32"``. ``--variant LABEL=FLAGS`` (repeatable) serves ours once per
variant instead, side by side in the same run, and reports each variant's throughput against the first's
(``costs``): ``--variant engine= --variant "batch-invariant=--batch-invariant"`` measures a flag's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import httpx
import torch

from engine.model.loader.resolve import default_gguf_file

from . import serve
from .common import free_port, run_info, synthetic_prompts, wait_until_ready

LLAMA = "llama.cpp"
OURS = "engine"
DEFAULT_LLAMA_SERVER = "/tmp/llama.cpp/build/bin/llama-server"
CTX_PER_SLOT = 512  # llama-server's -c is shared by its -np slots: 512 each, as measured
MAX_LLAMA_FAILED_FRACTION = 0.02


def llama_server_command(binary: str, gguf: str, port: int, parallel: int, threads: int,
                         ctx_per_slot: int) -> list[str]:
    """The measured invocation: one slot per request in flight, continuous batching, no web UI."""
    return [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-c", str(ctx_per_slot * parallel),
            "-np", str(parallel), "-cb", "-t", str(threads), "-tb", str(threads), "--no-webui"]


def engine_command(model: str | None, port: int, max_num_seqs: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "engine", "serve", *([model] if model else []), "--host", "127.0.0.1",
            "--port", str(port), "--max-num-seqs", str(max_num_seqs), *extra]


@contextlib.contextmanager
def running(command: list[str], port: int, log_path: Path, timeout_s: float) -> Iterator[str]:
    """Start a server, yield its base URL once /health answers, and stop it on the way out (errors too)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(f"{url}/health", process, log_path, timeout_s)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def server_order(index: int, ours: list[str]) -> list[str]:
    """llama.cpp first at even positions of the sweep, ours first (in reverse) at odd ones."""
    return [LLAMA, *ours] if index % 2 == 0 else [*reversed(ours), LLAMA]


def parse_variants(variants: list[str], engine_args: str) -> dict[str, list[str]]:
    """``LABEL=FLAGS`` strings -> flags per label; none given: ours once, with ``engine_args``."""
    if not variants:
        return {OURS: shlex.split(engine_args)}
    parsed = {}
    for variant in variants:
        label, sep, flags = variant.partition("=")
        if not sep or not label or label == LLAMA or label in parsed:
            raise SystemExit(f"--variant wants a new LABEL=FLAGS (not {LLAMA!r}), got {variant!r}")
        parsed[label] = shlex.split(flags)
    return parsed


def ratios(ours: dict, llama: dict, label: str = OURS) -> dict:
    """Ours over llama.cpp for throughput (above 1: we are faster), and both sides' p50 latencies."""
    return {"concurrency": ours["concurrency"], "server": label,
            "output_tokens_per_s_ratio": ours["output_tokens_per_s"] / llama["output_tokens_per_s"],
            **{key: {label: ours[key], LLAMA: llama[key], "ratio": ours[key] / llama[key]}
               for key in ("ttft_ms_p50", "itl_ms_p50")}}


def measure(label: str, url: str, prompts: list[list[int]], output_len: int, concurrency: int) -> dict:
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    done, seconds = asyncio.run(serve.run_load(url, model, prompts, output_len, concurrency, None))
    run = {"concurrency": concurrency, **serve.summarize(done, seconds)}
    # A ratio over partial runs would mislead. llama-server alone is allowed a stray failure: its
    # output parser rejects a stream whose first token is a lone UTF-8 continuation byte (seen with
    # these random-id prompts, 1 request in 128); the count and the error stay in the JSON.
    allowed = run["requests"] * MAX_LLAMA_FAILED_FRACTION if label == LLAMA else 0
    if run["failed"] > allowed:
        raise RuntimeError(f"{label}: {run['failed']} of {run['requests']} requests failed: {run['first_error']}")
    if run["failed"]:
        print(f"{label} c={concurrency}: {run['failed']} of {run['requests']} requests failed, "
              f"first: {run['first_error']}", flush=True)
    print(f"{label} c={concurrency}: {run['output_tokens_per_s']:.1f} output tok/s, "
          f"TTFT p50 {run['ttft_ms_p50']:.0f} ms, ITL p50 {run['itl_ms_p50']:.1f} ms", flush=True)
    return run


def plot(results: dict, path: Path) -> None:
    """serve.py's latency-against-throughput plot, one line per server."""
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for label, server in results["servers"].items():
            file = Path(tmp) / f"{len(files)}.json"
            file.write_text(json.dumps({"label": label, "runs": server["runs"], "workload": results["workload"]}))
            files.append(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        serve.plot(files, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER", DEFAULT_LLAMA_SERVER))
    parser.add_argument("--gguf", default=None, help="llama.cpp's model (default: the default model's GGUF)")
    parser.add_argument("--model", default=None, help="our model (default: the default model)")
    parser.add_argument("--engine-args", default="", help="extra flags for engine serve, one string")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=FLAGS",
                        help="serve ours once per variant, with these flags (repeatable; replaces --engine-args)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="llama-server -t and -tb (default: torch's thread count, what our server uses)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--num-prompts", type=int, default=None, help="per run (default: 4 x concurrency, at least 8)")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=49152, help="synthetic prompt ids are drawn below this")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds each server gets to load")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "vs_llama_cpp",
                        help="folder for the servers' logs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vs_llama_cpp.json"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/results/vs_llama_cpp.png"))
    args = parser.parse_args()
    if not Path(args.llama_server).is_file():
        parser.error(f"no llama-server at {args.llama_server} (build it with shared/tools/build_llama_server.sh)")
    gguf = args.gguf or str(default_gguf_file())
    ctx_per_slot = max(CTX_PER_SLOT, args.input_len + args.output_len)

    variants = parse_variants(args.variant, args.engine_args)
    max_num_seqs = max(256, *args.concurrency)
    ports = {label: free_port() for label in variants}
    commands = {label: engine_command(args.model, ports[label], max_num_seqs, flags) for label, flags in variants.items()}
    results = {**run_info(), "workload": {"input_len": args.input_len, "output_len": args.output_len},
               "servers": {LLAMA: {"binary": args.llama_server, "gguf": gguf, "commands": [], "runs": []},
                           **{label: {"model": args.model, "command": shlex.join(command), "runs": []}
                              for label, command in commands.items()}},
               "order": [], "ratios": [], "costs": []}
    with contextlib.ExitStack() as stack:
        ours_urls = {label: stack.enter_context(running(command, ports[label], args.logs / f"{label}.log",
                                                        args.startup_timeout))
                     for label, command in commands.items()}
        for index, concurrency in enumerate(args.concurrency):
            count = args.num_prompts or max(8, 4 * concurrency)
            prompts = synthetic_prompts(count, args.input_len, args.vocab_size, seed=index)
            port = free_port()
            llama_cmd = llama_server_command(args.llama_server, gguf, port, concurrency, args.threads, ctx_per_slot)
            results["servers"][LLAMA]["commands"].append(shlex.join(llama_cmd))
            log_path = args.logs / f"llama-server-np{concurrency}.log"
            with running(llama_cmd, port, log_path, args.startup_timeout) as llama_url:
                urls = {LLAMA: llama_url, **ours_urls}
                order = server_order(index, list(variants))
                runs = {label: measure(label, urls[label], prompts, args.output_len, concurrency) for label in order}
            results["order"].append({"concurrency": concurrency, "order": order})
            for label, run in runs.items():
                results["servers"][label]["runs"].append(run)
            for label in variants:
                results["ratios"].append(ratios(runs[label], runs[LLAMA], label))
                ratio = results["ratios"][-1]["output_tokens_per_s_ratio"]
                print(f"c={concurrency}: {label}/llama.cpp output tok/s {ratio:.2f}", flush=True)
            baseline = next(iter(variants))
            for label in list(variants)[1:]:
                cost = runs[label]["output_tokens_per_s"] / runs[baseline]["output_tokens_per_s"]
                results["costs"].append({"concurrency": concurrency, "server": label, "baseline": baseline,
                                         "output_tokens_per_s_ratio": cost})
                print(f"c={concurrency}: {label}/{baseline} output tok/s {cost:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    plot(results, args.plot)


if __name__ == "__main__":
    main()
