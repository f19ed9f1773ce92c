"""Start-up: how soon a fresh process answers, streams, and runs at full speed, cold and warm.

Cold: the engine's cache folder (``ENGINE_CACHE_DIR``) holds the default model's GGUF file and
nothing derived from it (no converted model, no compiled graph), and the C++ extensions folder is
empty. Warm: the folders as the cold start left them. llama.cpp's llama-server gets the same GGUF
file in the same run. Times are from the command's launch:

- ``ready_s``: the first 200 from ``/health`` (polled every 10 ms);
- ``first_token_s``: a streamed ``/v1/completions`` request sent at ready, its first token;
- ``full_speed_s``: requests of ``--output-len`` tokens at one stream, back to back, until the
  server has loaded every compiled graph (``engine:compiled_graphs`` of ``engine:graphs_total``;
  llama-server has none) and three more requests have run. The steady inter-token latency is the
  median of those three requests' medians; full speed is the start of the first request from
  which every request's median is within 5% of it.

``engine generate`` (its own defaults: one sequence) is timed from its stdout over a long generation
(``--generate-tokens``, ``--ignore-eos``): the first token is the first bytes written, and the
inter-token latency is taken in windows of 32 writes (one per token). The context grows along the
generation, and the latency with it, so each window is compared with the warm run, the reference:
full speed is the start of the first window from which every window is within 5% of the slowest of
the reference's five windows around it (run-to-run jitter here is a few percent). The warm run is
its own reference: its graph is loaded before its first token.

    python -m benchmarks.startup --out benchmarks/results/startup.json --plot benchmarks/results/startup.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from engine.model.loader.resolve import default_gguf_file

from . import serve
from .common import free_port, median, run_info, synthetic_prompts
from .vs_llama_cpp import DEFAULT_LLAMA_SERVER, llama_server_command

WITHIN = 1.05  # full speed: inter-token latency within 5% of the steady value
WINDOW = 32  # engine generate: writes per window
SERVED = "bench"


def folders(root: Path, gguf: Path) -> dict[str, str]:
    """A cold cache: the model file only (where the engine looks for its default model)."""
    (root / "cache" / "gguf").mkdir(parents=True)
    shutil.copy2(gguf, root / "cache" / "gguf" / gguf.name)
    return {"ENGINE_CACHE_DIR": str(root / "cache"), "TORCH_EXTENSIONS_DIR": str(root / "extensions")}


def steady_from(itls: list[float], settled: int) -> tuple[float, int]:
    """The steady latency (median of the last ``settled`` values) and the first index from which every
    value is within ``WITHIN`` of it."""
    steady = median(itls[-settled:])
    first = len(itls)
    while first > 0 and itls[first - 1] <= WITHIN * steady:
        first -= 1
    return steady, first


async def _wait_ready(url: str, process: subprocess.Popen, started: float, timeout_s: float) -> float:
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() - started < timeout_s:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}")
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.01)  # polling, bounded by the deadline
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s")


async def _compiled(client: httpx.AsyncClient, url: str, engine: bool) -> bool:
    if not engine:
        return True
    text = (await client.get(f"{url}/metrics")).text
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(("engine:compiled_graphs{", "engine:graphs_total{"))}
    return values["engine:compiled_graphs"] == values["engine:graphs_total"]


async def time_server(command: list[str], port: int, env: dict[str, str], engine: bool, prompt: list[int],
                      output_len: int, log: Path, timeout_s: float) -> dict:
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        ready = await _wait_ready(url, process, started, timeout_s)
        requests, settled = [], 0
        async with httpx.AsyncClient(timeout=600) as client:
            completions = f"{url}/v1/completions"
            while settled < 3:
                if time.monotonic() - started > timeout_s:
                    raise RuntimeError(f"not at full speed after {timeout_s:.0f} s")
                compiled = await _compiled(client, url, engine)
                sent = time.monotonic() - started
                result = await serve.one_request(client, completions, SERVED, prompt, output_len)
                if not result.ok:
                    raise RuntimeError(f"request failed: {result.error}")
                times = result.token_times
                requests.append({"start_s": sent, "first_token_s": sent + times[0],
                                 "itl_ms": 1e3 * median([b - a for a, b in zip(times, times[1:])])})
                settled += compiled
        steady, first = steady_from([r["itl_ms"] for r in requests], 3)
        return {"command": command, "ready_s": ready, "first_token_s": requests[0]["first_token_s"],
                "full_speed_s": requests[first]["start_s"], "steady_itl_ms": steady, "requests": requests}
    finally:
        process.terminate()
        process.wait(timeout=60)


def time_generate(command: list[str], env: dict[str, str], log: Path, timeout_s: float) -> dict:
    started = time.monotonic()
    with open(log, "w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env={**os.environ, **env})
    writes: list[float] = []

    def read() -> None:
        while os.read(process.stdout.fileno(), 65536):
            writes.append(time.monotonic() - started)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        process.wait(timeout=timeout_s)
    finally:
        process.kill()
    reader.join(timeout=10)
    if process.returncode != 0 or len(writes) < 4 * WINDOW:
        raise RuntimeError(f"engine generate exited with {process.returncode} after {len(writes)} writes; see {log}")
    windows = [writes[i : i + WINDOW + 1] for i in range(0, len(writes) - WINDOW, WINDOW)]
    return {"command": command, "first_token_s": writes[0], "writes": len(writes),
            "window_start_s": [w[0] for w in windows],
            "window_itl_ms": [1e3 * median([b - a for a, b in zip(w, w[1:])]) for w in windows]}


def generate_full_speed(run: dict, reference: dict) -> float | None:
    """The start of the first window from which every window is within ``WITHIN`` of the reference's
    around it (None: not before the generation ended; raise ``--generate-tokens``)."""
    ref = reference["window_itl_ms"]
    envelope = [max(ref[max(0, i - 2) : i + 3]) for i in range(len(ref))]
    pairs = list(zip(run["window_itl_ms"], envelope))
    first = len(pairs)
    while first > 0 and pairs[first - 1][0] <= WITHIN * pairs[first - 1][1]:
        first -= 1
    return run["window_start_s"][first] if first < len(pairs) - 2 else None


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{name}\n{start}", run) for name, starts in results["runs"].items() for start, run in starts.items()]
    fig, ax = plt.subplots(figsize=(10, 4))
    for offset, (key, label) in enumerate((("ready_s", "ready (/health)"), ("first_token_s", "first token"),
                                           ("full_speed_s", "full speed"))):
        xs = [i + (offset - 1) * 0.27 for i in range(len(rows))]
        values = [run.get(key) or 0.0 for _, run in rows]
        bars = ax.bar(xs, values, width=0.27, label=label)
        ax.bar_label(bars, labels=[f"{v:.1f}" if v else "" for v in values], fontsize=7)
    ax.set_xticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    ax.set_ylabel("seconds from launch")
    ax.set_yscale("symlog", linthresh=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("start-up, default model (SmolLM2-135M Q4_1 GGUF), cold and warm cache", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER", DEFAULT_LLAMA_SERVER))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--generate-tokens", type=int, default=3000)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/startup.json"))
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    if not Path(args.llama_server).is_file():
        parser.error(f"no llama-server at {args.llama_server} (build it with shared/tools/build_llama_server.sh)")
    gguf = default_gguf_file()
    (prompt,) = synthetic_prompts(1, args.prompt_len, 49152, seed=0)
    runs: dict[str, dict] = {"llama-server": {}, "engine serve": {}, "engine generate": {}}
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        root = Path(tmp)
        serve_env, generate_env = folders(root / "serve", gguf), folders(root / "generate", gguf)
        for start in ("cold", "warm"):
            port = free_port()
            llama = llama_server_command(args.llama_server, str(gguf), port, 1, args.threads, 2 * args.prompt_len)
            runs["llama-server"][start] = asyncio.run(time_server(
                llama, port, {}, False, prompt, args.output_len, root / f"llama-{start}.log", args.timeout))
            port = free_port()
            ours = [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", str(port),
                    "--served-model-name", SERVED]
            runs["engine serve"][start] = asyncio.run(time_server(
                ours, port, serve_env, True, prompt, args.output_len, root / f"serve-{start}.log", args.timeout))
            generate = [sys.executable, "-m", "engine", "generate", "Once upon a time", "--max-tokens",
                        str(args.generate_tokens), "--ignore-eos"]
            runs["engine generate"][start] = time_generate(generate, generate_env, root / f"generate-{start}.log",
                                                           args.timeout)
    generated = runs["engine generate"]
    for start in generated:
        generated[start]["full_speed_s"] = generate_full_speed(generated[start], generated["warm"])
        generated[start]["steady_itl_ms"] = median(generated["warm"]["window_itl_ms"][-3:])
    for name, starts in runs.items():
        for start, run in starts.items():
            print(f"{name:16} {start}: ready {run.get('ready_s', float('nan')):6.2f} s, first token "
                  f"{run['first_token_s']:6.2f} s, full speed {run['full_speed_s'] or float('nan'):6.1f} s "
                  f"(steady ITL {run['steady_itl_ms']:.1f} ms)")
    results = {**run_info(), "gguf": str(gguf), "prompt_len": args.prompt_len, "output_len": args.output_len,
               "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
