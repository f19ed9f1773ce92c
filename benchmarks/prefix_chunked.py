"""Prefix caching and chunked prefill, each against itself switched off, in one run.

A. Many requests sharing a long system prompt: time to first token and throughput, caching on vs off.
B. Decode inter-token latency of running requests while a long prompt arrives: chunked vs not.

    python -m benchmarks.prefix_chunked --out benchmarks/results/prefix_chunked.json --plot benchmarks/results/prefix_chunked.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


from engine import LLM, SamplingParams

from .common import percentile, run_info


def shared_prefix(model: str | None, caching: bool, num_requests: int, system_len: int, output_len: int) -> dict:
    llm = LLM(model, enable_prefix_caching=caching, max_model_len=2048)
    engine = llm.engine
    system = [100 + (i * 37) % 20000 for i in range(system_len)]
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    started = time.monotonic()
    for i in range(num_requests):
        question = [30000 + (i * 101 + j * 7) % 10000 for j in range(16)]
        engine.add_request(str(i), {"prompt_token_ids": system + question}, params)
    finished = []
    while engine.has_unfinished_requests():
        finished += [out for out in engine.step() if out.finished]
    elapsed = time.monotonic() - started
    ttfts = [out.metrics.first_token_time - out.metrics.arrival_time for out in finished]
    return {"caching": caching, "requests": num_requests, "system_tokens": system_len, "output_tokens": output_len,
            "seconds": elapsed, "output_tokens_per_s": num_requests * output_len / elapsed,
            "ttft_p50_s": statistics.median(ttfts), "ttft_max_s": max(ttfts),
            "cached_tokens": sum(out.num_cached_tokens for out in finished)}


def long_prompt_arrival(model: str | None, budget: int, num_decoders: int, long_len: int) -> dict:
    llm = LLM(model, enable_prefix_caching=False, max_model_len=4096, max_num_batched_tokens=budget)
    engine = llm.engine
    params = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
    for i in range(num_decoders):
        engine.add_request(f"d{i}", {"prompt_token_ids": [200 + i, 300, 400, 500]}, params)
    for _ in range(5):  # decoders are running
        engine.step()
    engine.add_request("long", {"prompt_token_ids": [1000 + (i * 13) % 30000 for i in range(long_len)]},
                       SamplingParams(max_tokens=1))
    gaps, timeline, last = [], [], time.monotonic()
    arrived = last
    long_done = None
    while long_done is None or len(timeline) < 40:
        outputs = engine.step()
        now = time.monotonic()
        if any(o.request_id.startswith("d") for o in outputs):
            gaps.append(now - last)
            timeline.append({"t": now - arrived, "gap_ms": 1e3 * (now - last)})
            last = now
        if long_done is None and any(o.request_id == "long" for o in outputs):
            long_done = now - arrived
    for i in range(num_decoders):
        engine.abort(f"d{i}")
    window = [g for g, point in zip(gaps, timeline) if point["t"] <= long_done + 1e-9]
    return {"max_num_batched_tokens": budget, "decoders": num_decoders, "long_prompt_tokens": long_len,
            "long_prompt_ttft_s": long_done, "itl_while_prefilling_p50_ms": 1e3 * statistics.median(window),
            "itl_while_prefilling_max_ms": 1e3 * max(window), "itl_overall_p99_ms": 1e3 * percentile(gaps, 0.99),
            "timeline": timeline}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    runs = results["shared_prefix"]
    labels = ["caching on" if r["caching"] else "caching off" for r in runs]
    left.bar([l + "\nTTFT p50 (s)" for l in labels], [r["ttft_p50_s"] for r in runs], color=["tab:green", "tab:grey"])
    left.set_title(f"{runs[0]['requests']} requests, {runs[0]['system_tokens']}-token shared system prompt")
    for label, run in zip(labels, runs):
        left.annotate(f"{run['output_tokens_per_s']:.0f} tok/s", (labels.index(label), run["ttft_p50_s"]),
                      ha="center", va="bottom")
    for run in results["long_prompt"]:
        name = f"budget {run['max_num_batched_tokens']}"
        right.plot([p["t"] for p in run["timeline"]], [p["gap_ms"] for p in run["timeline"]], marker=".", label=name)
        right.axvline(run["long_prompt_ttft_s"], linestyle=":", color=right.lines[-1].get_color())
    right.set_xlabel("seconds since a long prompt arrived (dotted: its first token)")
    right.set_ylabel("decode inter-token latency (ms)")
    right.set_title(f"{results['long_prompt'][0]['decoders']} decoding requests, "
                    f"{results['long_prompt'][0]['long_prompt_tokens']}-token prompt arrives")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prefix_chunked.json"))
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    results = {
        **run_info(),
        "shared_prefix": [shared_prefix(args.model, caching, 16, 1024, 16) for caching in (True, False)],
        "long_prompt": [long_prompt_arrival(args.model, budget, 8, 1536) for budget in (128, 2048)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)
    for run in results["shared_prefix"]:
        print(f"caching {'on ' if run['caching'] else 'off'}: TTFT p50 {run['ttft_p50_s']:.2f} s, max {run['ttft_max_s']:.2f} s, "
              f"{run['output_tokens_per_s']:.1f} output tok/s, {run['cached_tokens']} cached tokens")
    for run in results["long_prompt"]:
        print(f"budget {run['max_num_batched_tokens']:5d}: decode ITL while the long prompt is read p50 "
              f"{run['itl_while_prefilling_p50_ms']:.0f} ms, max {run['itl_while_prefilling_max_ms']:.0f} ms; "
              f"long prompt TTFT {run['long_prompt_ttft_s']:.2f} s")


if __name__ == "__main__":
    main()
