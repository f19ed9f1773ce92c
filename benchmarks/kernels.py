"""Kernel benchmarks in roofline terms: achieved GB/s (memory-bound ops) or TFLOP/s (prefill)
against this device's measured copy bandwidth and matmul rate.

    python -m benchmarks.kernels --out benchmarks/results/kernels.json --plot benchmarks/results/kernels.png

On CUDA the ops are the Triton kernels; on a CPU the torch references, with a small grid (a smoke
run of the script, not a figure to compare).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from engine.kernels import kernel_set, resolve_kernels

from .common import run_info

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
OPS = kernel_set(resolve_kernels("auto", DEVICE))
# A Llama-3-8B-like attention layer: 32 query heads over 8 KV heads of 128 dims.
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16


def median_seconds(fn, repeats: int = 50) -> float:
    if CUDA:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    fn()
    times = []
    for _ in range(max(3, repeats // 10)):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes read plus written per second by a large device-to-device copy."""
    size = (1 << 30) if CUDA else (64 << 20)
    src = torch.randn(size // 4, device=DEVICE)
    dst = torch.empty_like(src)
    return 2 * size / median_seconds(lambda: dst.copy_(src))


def matmul_rate() -> float:
    n = 8192 if CUDA else 1024
    a = torch.randn(n, n, device=DEVICE, dtype=DTYPE)
    b = torch.randn(n, n, device=DEVICE, dtype=DTYPE)
    return 2 * n**3 / median_seconds(lambda: a @ b)


def paged_kv(batch: int, context: int):
    blocks_per_seq = math.ceil(context / BLOCK_SIZE)
    num_blocks = batch * blocks_per_seq
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, device=DEVICE, dtype=DTYPE)
    v_cache = torch.randn(shape, device=DEVICE, dtype=DTYPE)
    tables = torch.randperm(num_blocks, device=DEVICE).to(torch.int32).reshape(batch, blocks_per_seq)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=DEVICE)
    return k_cache, v_cache, tables, seq_lens


def bench_decode(batch: int, context: int) -> dict:
    k_cache, v_cache, tables, seq_lens = paged_kv(batch, context)
    q = torch.randn(batch, NUM_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    seconds = median_seconds(lambda: OPS.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, HEAD_DIM**-0.5))
    element = k_cache.element_size()
    moved = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * element + 2 * q.numel() * element + tables.numel() * 4
    return {"kernel": "paged_attention_decode", "batch": batch, "context": context, "seconds": seconds,
            "bytes": moved, "gb_per_s": moved / seconds / 1e9}


def bench_prefill(batch: int, q_len: int) -> dict:
    k_cache, v_cache, tables, seq_lens = paged_kv(batch, q_len)
    q = torch.randn(batch * q_len, NUM_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    cu = torch.arange(0, batch + 1, device=DEVICE, dtype=torch.int32) * q_len
    seconds = median_seconds(
        lambda: OPS.paged_attention_prefill(q, k_cache, v_cache, tables, cu, seq_lens, HEAD_DIM**-0.5))
    # Causal: row r attends r + 1 keys; two matmuls (QK^T and PV) of 2 flops per multiply-add.
    flops = 4 * batch * NUM_HEADS * HEAD_DIM * (q_len * (q_len + 1) / 2)
    return {"kernel": "paged_attention_prefill", "batch": batch, "context": q_len, "seconds": seconds,
            "flops": flops, "tflop_per_s": flops / seconds / 1e12}


def bench_store_kv(num_tokens: int) -> dict:
    k_cache, v_cache, _, _ = paged_kv(1, num_tokens)
    k = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    v = torch.randn_like(k)
    slots = torch.randperm(k_cache.shape[0] * BLOCK_SIZE, device=DEVICE)[:num_tokens]
    seconds = median_seconds(lambda: OPS.store_kv(k, v, k_cache, v_cache, slots))
    moved = 4 * k.numel() * k.element_size() + slots.numel() * 8
    return {"kernel": "store_kv", "batch": num_tokens, "context": 0, "seconds": seconds, "bytes": moved,
            "gb_per_s": moved / seconds / 1e9}


def bench_rows(name: str, rows: int, hidden: int = 4096) -> dict:
    x = torch.randn(rows, hidden, device=DEVICE, dtype=DTYPE)
    element = x.element_size()
    if name == "rms_norm":
        residual, weight = torch.randn_like(x), torch.randn(hidden, device=DEVICE, dtype=DTYPE)
        fn, moved = (lambda: OPS.rms_norm(x, weight, 1e-6, residual)), 4 * x.numel() * element
    elif name == "silu_and_mul":
        fn, moved = (lambda: OPS.silu_and_mul(x)), 1.5 * x.numel() * element
    else:
        q = torch.randn(rows, NUM_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
        k = torch.randn(rows, NUM_KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
        angles = torch.rand(8192, HEAD_DIM // 2, device=DEVICE)
        cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
        positions = torch.randint(0, 8192, (rows,), device=DEVICE)
        fn, moved = (lambda: OPS.rotary_embedding(positions, q, k, cache)), 2 * (q.numel() + k.numel()) * element
    seconds = median_seconds(fn)
    return {"kernel": name, "batch": rows, "context": 0, "seconds": seconds, "bytes": moved,
            "gb_per_s": moved / seconds / 1e9}


def run(grid_scale: str) -> dict:
    big = grid_scale == "full"
    results = {**run_info(), "device": torch.cuda.get_device_name() if CUDA else platform.processor() or "cpu",
               "dtype": str(DTYPE).removeprefix("torch."),
               "copy_gb_per_s": copy_bandwidth() / 1e9, "matmul_tflop_per_s": matmul_rate() / 1e12, "kernels": []}
    for batch in ((1, 16, 64, 128) if big else (1, 4)):
        for context in ((512, 4096, 16384) if big else (128, 512)):
            results["kernels"].append(bench_decode(batch, context))
    for batch, q_len in (((1, 4096), (8, 1024), (32, 512)) if big else ((1, 128), (2, 64))):
        results["kernels"].append(bench_prefill(batch, q_len))
    for tokens in ((64, 1024, 8192) if big else (16, 256)):
        results["kernels"].append(bench_store_kv(tokens))
    for name in ("rms_norm", "silu_and_mul", "rotary_embedding"):
        for rows in ((64, 4096) if big else (16, 128)):
            results["kernels"].append(bench_rows(name, rows))
    for entry in results["kernels"]:
        if "gb_per_s" in entry:
            entry["fraction_of_copy_bandwidth"] = entry["gb_per_s"] / results["copy_gb_per_s"]
        else:
            entry["fraction_of_matmul_rate"] = entry["tflop_per_s"] / results["matmul_tflop_per_s"]
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = results["kernels"]
    labels = [f"{e['kernel'].replace('paged_attention_', 'attn_')}\n{e['batch']}x{e['context']}" for e in entries]
    values = [e.get("fraction_of_copy_bandwidth", e.get("fraction_of_matmul_rate")) for e in entries]
    colours = ["tab:blue" if "fraction_of_copy_bandwidth" in e else "tab:orange" for e in entries]
    fig, ax = plt.subplots(figsize=(max(10, len(entries) * 0.45), 5))
    ax.bar(range(len(entries)), values, color=colours)
    ax.axhline(0.7, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(entries)), labels, rotation=90, fontsize=7)
    ax.set_ylabel("fraction of the measured ceiling")
    ax.set_title(f"{results['device']} {results['dtype']}: blue = GB/s over copy {results['copy_gb_per_s']:.0f} GB/s, "
                 f"orange = TFLOP/s over matmul {results['matmul_tflop_per_s']:.1f} TFLOP/s", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kernels.json"))
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--grid", choices=("full", "small"), default="full" if CUDA else "small")
    args = parser.parse_args()
    results = run(args.grid)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)
    print(f"{results['device']}: copy {results['copy_gb_per_s']:.0f} GB/s, matmul {results['matmul_tflop_per_s']:.1f} TFLOP/s")
    for e in results["kernels"]:
        rate = f"{e['gb_per_s']:8.1f} GB/s" if "gb_per_s" in e else f"{e['tflop_per_s']:8.2f} TFLOP/s"
        share = e.get("fraction_of_copy_bandwidth", e.get("fraction_of_matmul_rate"))
        print(f"{e['kernel']:26s} {e['batch']:5d} x {e['context']:6d}  {e['seconds'] * 1e6:10.1f} us  {rate}  {share:6.1%}")


if __name__ == "__main__":
    main()
