"""Quantization quality and speed: perplexity of fp, RTN, GPTQ and AWQ versions of one model on a
held-out text (fp32, the exact path), and decode throughput of the w4a16 path against the
full-precision one in the default dtype, in one run.

    python -m benchmarks.quant --group-size 64 --out benchmarks/results/quant.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from engine import LLM, SamplingParams, quantize
from engine.model.loader.resolve import default_model_folder

from .common import run_info, synthetic_prompts, timed_generate

HELDOUT = Path(__file__).with_name("data") / "heldout.txt"


def perplexity(llm: LLM, text: str, max_tokens: int) -> float:
    ids = llm.get_tokenizer().encode(text)[:max_tokens]
    out = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    nll = -sum(entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], ids[1:])) / (len(ids) - 1)
    return math.exp(nll)


def throughput(llm: LLM, num_requests: int, input_len: int, output_len: int) -> float:
    prompts = synthetic_prompts(num_requests, input_len, llm.engine.vocab_size)
    seconds, _ = timed_generate(llm, prompts, output_len)
    return num_requests * output_len / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a safetensors folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=1024, help="held-out tokens scored")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quant.json"))
    args = parser.parse_args()
    source = Path(args.model) if args.model else default_model_folder()
    text = HELDOUT.read_text()
    results = {**run_info(), "model": source.name, "group_size": args.group_size, "bits": 4, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"fp": source}
        variants = {"rtn": {"method": "rtn"}, "gptq": {"method": "gptq"},  # act-order, the default
                    "gptq-plain-order": {"method": "gptq", "desc_act": False}, "awq": {"method": "awq"}}
        for name, options in variants.items():
            started = time.perf_counter()
            folders[name] = quantize(source, Path(tmp) / name, group_size=args.group_size, **options)
            results["variants"][name] = {"quantize_seconds": time.perf_counter() - started}
        for name, folder in folders.items():
            entry = results["variants"].setdefault(name, {})
            entry["perplexity"] = perplexity(LLM(str(folder), max_model_len=2048, dtype="float32"), text, args.tokens)
            if name in ("fp", "gptq"):  # speed in the default dtype: bf16 (int4 kernel) where the CPU has it
                llm = LLM(str(folder), max_model_len=2048)
                entry["decode_dtype"] = str(llm.engine.runtime.dtype).removeprefix("torch.")
                entry["decode_tokens_per_s"] = throughput(llm, 16, 64, 32)
                entry["decode_tokens_per_s_batch1"] = throughput(llm, 1, 64, 64)
    fp = results["variants"]["fp"]["perplexity"]
    for name, entry in results["variants"].items():
        entry["perplexity_gap_to_fp"] = entry["perplexity"] - fp
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"{'variant':17s} {'perplexity':>11s} {'gap to fp':>10s} {'tok/s x16':>10s} {'tok/s x1':>9s}")
    for name, entry in results["variants"].items():
        speeds = (f"{entry['decode_tokens_per_s']:10.1f} {entry['decode_tokens_per_s_batch1']:9.1f}"
                  if "decode_tokens_per_s" in entry else "")
        print(f"{name:17s} {entry['perplexity']:11.3f} {entry['perplexity_gap_to_fp']:+10.3f} {speeds}")


if __name__ == "__main__":
    main()
