"""End-to-end decode throughput on CUDA: CUDA graphs vs eager, Triton vs torch ops, same run.

A random-weight model with SmolLM2-135M's shapes (the GPU machine has no network to fetch the
real one; the speed of a forward pass does not depend on the weights) and a synthetic
workload of token-id prompts with ``ignore_eos``.

    python -m benchmarks.gpu_e2e --out benchmarks/results/gpu/e2e.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from .common import timed_generate


VARIANTS = [("triton+graphs", {"kernels": "auto"}), ("triton eager", {"kernels": "auto", "enforce_eager": True}),
            ("torch ops eager", {"kernels": "torch", "enforce_eager": True})]


def make_model(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True, eos_token_id=2, bos_token_id=1,
                         architectures=["LlamaForCausalLM"])
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="t2").save_pretrained(folder)


def throughput(folder: Path, num_requests: int, input_len: int, output_len: int, **engine_kwargs) -> dict:
    from engine import LLM

    llm = LLM(str(folder), max_model_len=input_len + output_len + 16, **engine_kwargs)
    prompts = [[(7 * i + j) % 40000 + 100 for j in range(input_len)] for i in range(num_requests)]
    elapsed, outs = timed_generate(llm, prompts, output_len)  # the warm-up compiles the kernels
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    del llm
    torch.cuda.empty_cache()
    return {"requests": num_requests, "input_len": input_len, "output_len": output_len, "seconds": elapsed,
            "output_tokens_per_s": tokens / elapsed, "requests_per_s": num_requests / elapsed,
            "token_ids": [o.outputs[0].token_ids for o in outs]}


def fp32_agreement(folder: Path, num_requests: int = 8, output_len: int = 32) -> dict:
    """In fp32 the variants must agree on greedy tokens (bf16 flips near-ties of random weights): the
    share of sequences equal to Triton + CUDA graphs', per variant."""
    from engine import LLM, SamplingParams

    prompts = [{"prompt_token_ids": [(7 * i + j) % 40000 + 100 for j in range(64)]} for i in range(num_requests)]
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    tokens = {}
    for name, kwargs in VARIANTS:
        llm = LLM(str(folder), max_model_len=256, dtype="float32", **kwargs)
        tokens[name] = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        del llm
        torch.cuda.empty_cache()
    first = tokens["triton+graphs"]
    return {name: sum(a == b for a, b in zip(ids, first)) / len(first) for name, ids in tokens.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu/e2e.json"))
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_model(folder)
        for batch in (1, 64):
            baseline_ids = None
            for name, kwargs in VARIANTS:
                run = throughput(folder, batch, 128, 128, dtype="bfloat16", **kwargs)
                ids = run.pop("token_ids")
                baseline_ids = baseline_ids or ids
                same = sum(a == b for a, b in zip(ids, baseline_ids)) / len(ids)
                run.update(variant=name, batch=batch, same_tokens_as_first_variant=same)
                results["runs"].append(run)
                print(f"batch {batch:3d} {name:16s} {run['output_tokens_per_s']:9.1f} tok/s  "
                      f"same tokens as graphs: {same:.0%}", flush=True)
        results["fp32_same_greedy_tokens"] = fp32_agreement(folder)
        print(f"fp32, same greedy tokens as Triton + graphs: {results['fp32_same_greedy_tokens']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
