"""Serving benchmark: streamed /v1/completions load against any OpenAI-compatible server (ours,
vLLM, llama.cpp's server, or benchmarks/hf_server.py), at fixed concurrency or request rate.

Reports time to first token, inter-token latency (the gap between streamed tokens) and time per
output token (after the first), p50/p90/p99, plus output tokens/s and requests/s. A sweep over
several concurrencies writes JSON; ``--plot`` draws latency against throughput for one or more
result files (one line per server).

    engine serve --port 8000 &
    python -m benchmarks.serve --base-url http://127.0.0.1:8000 --concurrency 1 8 32 \
        --label engine --out benchmarks/results/serve_engine.json
    python -m benchmarks.serve --plot benchmarks/results/serve.png \
        benchmarks/results/serve_engine.json benchmarks/results/serve_transformers.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .common import median, percentile, run_info, synthetic_prompts


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0
    latency: float = 0.0
    token_times: list[float] = field(default_factory=list)  # arrival of each streamed token
    num_tokens: int = 0
    error: str = ""


async def sse_events(response: httpx.Response):
    """The ``data`` of each server-sent event, per the SSE spec: lines end at CR, LF or CRLF only
    (httpx's ``aiter_lines`` also splits at U+2028, U+0085 and other separators that a token's text,
    sent unescaped by llama-server, may hold), multi-line data joined."""
    data: list[str] = []
    pending = ""
    async for text in response.aiter_text():
        text = pending + text
        cut = len(text) - text.endswith("\r")  # a CR at the end may be half of a CRLF: wait for the next byte
        lines = re.split(r"\r\n|\r|\n", text[:cut])
        pending = lines.pop() + text[cut:]  # an unfinished line
        for line in lines:
            if not line:
                if data:
                    yield "\n".join(data)
                    data = []
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
    if pending.startswith("data:"):
        data.append(pending[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: list[int], output_len: int) -> RequestResult:
    body = {"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0.0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    result = RequestResult(ok=False)
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            done, first = False, None
            async for data in sse_events(response):
                if data == "[DONE]":
                    done = True
                    break
                first = first or data
                chunk = json.loads(data)
                now = time.perf_counter()
                if chunk.get("usage"):
                    result.num_tokens = chunk["usage"]["completion_tokens"]
                # a chunk per token, text or not (bytes of a split character stream as empty text);
                # a closing chunk with only a finish_reason is not a token
                choice = (chunk.get("choices") or [{}])[0]
                if "text" in choice and (choice["text"] or not choice.get("finish_reason")):
                    result.token_times.append(now - started)
        result.ok = done and bool(result.token_times)
        if not result.ok:
            result.error = ("the stream ended before [DONE]" if result.token_times
                            else f"no token streamed; first event: {first!r:.300}")
        result.ttft = result.token_times[0] if result.token_times else 0.0
        result.latency = time.perf_counter() - started
        result.num_tokens = result.num_tokens or len(result.token_times)
    except (httpx.HTTPError, json.JSONDecodeError) as err:
        result.error = repr(err)
    return result


async def run_load(base_url: str, model: str, prompts: list[list[int]], output_len: int,
                   concurrency: int | None, request_rate: float | None, seed: int = 0) -> tuple[list[RequestResult], float]:
    """Closed loop at ``concurrency`` in flight, or open loop with Poisson arrivals at ``request_rate``/s."""
    url = base_url.rstrip("/") + "/v1/completions"
    limits = httpx.Limits(max_connections=max(concurrency or 0, 256))
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        await one_request(client, url, model, prompts[0], 4)  # warm-up
        started = time.perf_counter()
        if concurrency is not None:
            queue = list(reversed(prompts))
            results: list[RequestResult] = []

            async def worker():
                while queue:
                    results.append(await one_request(client, url, model, queue.pop(), output_len))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            rng = random.Random(seed)
            tasks = []
            for prompt in prompts:
                tasks.append(asyncio.create_task(one_request(client, url, model, prompt, output_len)))
                await asyncio.sleep(rng.expovariate(request_rate))
            results = list(await asyncio.gather(*tasks))
        return results, time.perf_counter() - started


def summarize(results: list[RequestResult], seconds: float) -> dict:
    done = [r for r in results if r.ok]
    itls = [b - a for r in done for a, b in zip(r.token_times, r.token_times[1:])]
    tpots = [(r.latency - r.ttft) / (r.num_tokens - 1) for r in done if r.num_tokens > 1]
    ttfts = [r.ttft for r in done]
    summary = {"requests": len(results), "failed": len(results) - len(done), "seconds": seconds,
               "requests_per_s": len(done) / seconds, "output_tokens_per_s": sum(r.num_tokens for r in done) / seconds}
    for name, values in (("ttft_ms", ttfts), ("itl_ms", itls), ("tpot_ms", tpots)):
        summary[f"{name}_p50"] = 1e3 * median(values)
        summary[f"{name}_p90"] = 1e3 * percentile(values, 0.90)
        summary[f"{name}_p99"] = 1e3 * percentile(values, 0.99)
    errors = [r.error for r in results if not r.ok]
    if errors:
        summary["first_error"] = errors[0]
    return summary


def plot(files: list[Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for file in files:
        results = json.loads(file.read_text())
        runs = results["runs"]
        rates = [run["output_tokens_per_s"] for run in runs]
        for ax, key in ((left, "itl_ms_p50"), (right, "ttft_ms_p50")):
            ax.plot(rates, [run[key] for run in runs], marker="o", label=results["label"])
            for run, rate in zip(runs, rates):
                ax.annotate(f"c={run['concurrency']}" if run.get("concurrency") else f"{run['request_rate']}/s",
                            (rate, run[key]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    left.set(xlabel="output tokens/s", ylabel="p50 inter-token latency (ms)", title="decode latency vs throughput")
    right.set(xlabel="output tokens/s", ylabel="p50 time to first token (ms)", title="TTFT vs throughput")
    right.set_yscale("log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    workload = json.loads(files[0].read_text())["workload"]
    fig.suptitle(f"streamed /v1/completions, {workload['input_len']} in / {workload['output_len']} out per request", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="the served model name (default: the first of /v1/models)")
    parser.add_argument("--label", default="engine", help="the name of this server in the results and plot")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[], help="closed loop: requests in flight")
    parser.add_argument("--request-rate", type=float, nargs="*", default=[], help="open loop: Poisson arrivals per second")
    parser.add_argument("--num-prompts", type=int, default=None, help="per run (default: 4 x concurrency, at least 8)")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=49152, help="synthetic prompt ids are drawn below this")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="draw the result files given as arguments")
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args()
    if args.plot and args.files:
        plot(args.files, args.plot)
        return
    if not args.concurrency and not args.request_rate:
        parser.error("give --concurrency or --request-rate (or --plot with result files)")
    model = args.model or httpx.get(args.base_url.rstrip("/") + "/v1/models").json()["data"][0]["id"]
    results = {**run_info(), "label": args.label, "base_url": args.base_url, "model": model,
               "workload": {"input_len": args.input_len, "output_len": args.output_len}, "runs": []}
    loads = [("concurrency", c) for c in args.concurrency] + [("request_rate", r) for r in args.request_rate]
    for kind, value in loads:
        count = args.num_prompts or max(8, 4 * int(value))
        prompts = synthetic_prompts(count, args.input_len, args.vocab_size, seed=len(results["runs"]))
        done, seconds = asyncio.run(run_load(args.base_url, model, prompts, args.output_len,
                                             value if kind == "concurrency" else None,
                                             value if kind == "request_rate" else None))
        run = {kind: value, **summarize(done, seconds)}
        results["runs"].append(run)
        print(f"{args.label} {kind}={value}: {run['output_tokens_per_s']:.1f} output tok/s, {run['requests_per_s']:.2f} req/s, "
              f"TTFT p50 {run['ttft_ms_p50']:.0f} ms, ITL p50 {run['itl_ms_p50']:.1f} ms (p99 {run['itl_ms_p99']:.1f}), "
              f"TPOT p50 {run['tpot_ms_p50']:.1f} ms, failed {run['failed']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
