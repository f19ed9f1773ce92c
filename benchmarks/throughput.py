"""Offline throughput: ``LLM.generate`` against transformers ``generate`` on the same synthetic
workload, in one run (sequential requests, and padded batches of each size given).

    python -m benchmarks.throughput --num-prompts 64 --input-len 128 --output-len 128 \
        --out benchmarks/results/throughput.json --plot benchmarks/results/throughput.png

Every request generates exactly ``--output-len`` tokens (``ignore_eos``; transformers gets
``min_new_tokens`` = ``max_new_tokens``), greedy, so both sides do the same work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from engine import LLM
from engine.model.loader.resolve import default_model_folder

from .common import run_info, synthetic_prompts, timed_generate


def run_engine(model: str | None, prompts: list[list[int]], output_len: int, **engine_kwargs) -> dict:
    llm = LLM(model, max_model_len=len(prompts[0]) + output_len, **engine_kwargs)
    elapsed, outputs = timed_generate(llm, prompts, output_len)
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert generated == len(prompts) * output_len, generated
    return _rates(elapsed, len(prompts), generated, dtype=str(llm.engine.runtime.dtype).removeprefix("torch."))


def run_transformers(model: str, prompts: list[list[int]], output_len: int, batch_size: int, dtype: torch.dtype) -> dict:
    """``batch_size`` 1 is sequential generation; larger sizes are padded batches (left padding)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).eval()
    pad = hf.config.eos_token_id if isinstance(hf.config.eos_token_id, int) else 0

    def generate(batch: list[list[int]], new_tokens: int) -> int:
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, pad_token_id=pad)
        return (out.shape[1] - width) * len(batch)

    with torch.inference_mode():
        generate(prompts[:batch_size], 4)  # warm-up
        started = time.perf_counter()
        generated = sum(generate(prompts[i : i + batch_size], output_len) for i in range(0, len(prompts), batch_size))
        elapsed = time.perf_counter() - started
    return _rates(elapsed, len(prompts), generated, batch_size=batch_size, dtype=str(dtype).removeprefix("torch."))


def _rates(seconds: float, requests: int, generated: int, **extra) -> dict:
    return {**extra, "seconds": seconds, "requests_per_s": requests / seconds, "output_tokens_per_s": generated / seconds}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [("engine", results["engine"]["output_tokens_per_s"])]
    runs += [(f"transformers\nbatch {r['batch_size']}", r["output_tokens_per_s"]) for r in results["transformers"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar([name for name, _ in runs], [rate for _, rate in runs], color=["C0"] + ["C7"] * (len(runs) - 1))
    ax.bar_label(bars, fmt="%.0f")
    w = results["workload"]
    ax.set_ylabel("output tokens/s")
    ax.set_title(f"{w['num_prompts']} requests x {w['input_len']} in / {w['output_len']} out, {results['model']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--dtype", default="auto", help="the engine's dtype")
    parser.add_argument("--hf-dtype", default="float32", help="transformers' dtype")
    parser.add_argument("--hf-batch-sizes", type=int, nargs="*", default=[1, 16, 32, 64],
                        help="1 = sequential; others = padded batches")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput.json"))
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()

    # the engine serves the default model as shipped (its GGUF file); transformers gets the same weights
    # dequantized into a Hugging Face folder
    model = args.model or str(default_model_folder())
    from transformers import AutoConfig

    prompts = synthetic_prompts(args.num_prompts, args.input_len, AutoConfig.from_pretrained(model).vocab_size)
    results = {**run_info(), "model": Path(model).name, "engine_model": args.model or "default (GGUF)",
               "workload": {"num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len},
               "engine": run_engine(args.model, prompts, args.output_len, dtype=args.dtype), "transformers": []}
    print(f"engine: {results['engine']['output_tokens_per_s']:.1f} output tok/s")
    for batch_size in args.hf_batch_sizes:
        run = run_transformers(model, prompts, args.output_len, batch_size, getattr(torch, args.hf_dtype))
        results["transformers"].append(run)
        print(f"transformers batch {batch_size}: {run['output_tokens_per_s']:.1f} output tok/s")
    ours = results["engine"]["output_tokens_per_s"]
    sequential = [r for r in results["transformers"] if r["batch_size"] == 1]
    batched = [r for r in results["transformers"] if r["batch_size"] > 1]
    if sequential:
        results["speedup_vs_sequential"] = ours / sequential[0]["output_tokens_per_s"]
    if batched:
        results["speedup_vs_best_batch"] = ours / max(r["output_tokens_per_s"] for r in batched)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)
    for key in ("speedup_vs_sequential", "speedup_vs_best_batch"):
        if key in results:
            print(f"{key}: {results[key]:.2f}x")


if __name__ == "__main__":
    main()
