"""How far our low-bit path and llama.cpp move log-probs from an fp32 reference, on the same tokens.

llama.cpp's server cannot score given tokens (no teacher forcing through its API), so it greedily
continues a fixed 140-token prompt (held-out text) and reports the log-probability of each token
it generates. With ``n_probs`` > 0 and ``post_sampling_probs`` false (the default) that is the
softmax of the raw logits over the whole vocabulary, before any sampler; with
``post_sampling_probs`` true a greedy run reports 1.0. ``ignore_eos`` only biases its sampler, not
the reported logits. Our engine under test does the same: it greedily continues the prompt one
token per step (decode steps of one sequence: the path a single chat stream takes, low-bit weights
in the default mode) and reports each token's log-prob. The reference (our engine on dequantized
weights in fp32) scores prompt + each continuation with ``prompt_logprobs``; each server's
|log-prob - reference| is taken over its own generated positions. Our prefill path (a prompt
scored at once) is reported too, on llama.cpp's continuation.

    python -m benchmarks.logprob_drift --out benchmarks/results/logprob_drift.json

``--reference-kwargs`` and ``--ours-kwargs`` are ``LLM`` keywords as JSON (reference default
``{"dtype": "float32"}``, which reads the GGUF dequantized; ours default ``{}``, the low-bit bf16 path).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import tempfile
from pathlib import Path

import httpx
import torch

from engine import LLM, SamplingParams
from engine.model.loader.resolve import default_gguf_file, resolve_model
from engine.processing.tokenizer import load_tokenizer

from .common import free_port, run_info
from .vs_llama_cpp import CTX_PER_SLOT, DEFAULT_LLAMA_SERVER, llama_server_command, running

TEXT = Path(__file__).with_name("data") / "heldout.txt"


def prompt_ids(tokenizer, text: str, num_tokens: int) -> list[int]:
    ids = tokenizer.encode(text)
    if len(ids) < num_tokens:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than the {num_tokens} asked")
    return ids[:num_tokens]


def llama_continuation(url: str, prompt: list[int], num_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy tokens after ``prompt`` from llama-server's /completion, with their pre-sampling log-probs."""
    body = {"prompt": prompt, "n_predict": num_tokens, "temperature": 0.0, "n_probs": 1,
            "post_sampling_probs": False, "ignore_eos": True, "cache_prompt": False}
    response = httpx.post(f"{url}/completion", json=body, timeout=600.0)
    response.raise_for_status()
    return parse_completion_probabilities(response.json()["completion_probabilities"])


def parse_completion_probabilities(entries: list[dict]) -> tuple[list[int], list[float]]:
    """Token ids and log-probs; a ``prob`` key instead of ``logprob`` means post-sampling values (refused)."""
    if any("logprob" not in entry for entry in entries):
        raise ValueError("llama-server returned post-sampling probabilities; send post_sampling_probs=false")
    return [entry["id"] for entry in entries], [entry["logprob"] for entry in entries]


def sequence_logprobs(llm: LLM, ids: list[int]) -> tuple[list[float], list[int]]:
    """Log-prob and rank (1 = the model's argmax) of each of ``ids[1:]`` given the tokens before it."""
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    out = llm.generate({"prompt_token_ids": ids}, params, use_tqdm=False)[0]
    chosen = [position[token] for position, token in zip(out.prompt_logprobs[1:], ids[1:])]
    return [entry.logprob for entry in chosen], [entry.rank for entry in chosen]


def greedy_continuation(llm: LLM, prompt: list[int], num_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy tokens after ``prompt``, decoded one step at a time, with the log-prob of each."""
    params = SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True, logprobs=0)
    out = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0].outputs[0]
    return out.token_ids, [entry[token].logprob for entry, token in zip(out.logprobs, out.token_ids)]


def drift(values: list[float], reference: list[float]) -> dict:
    deltas = [abs(a - b) for a, b in zip(values, reference, strict=True)]
    return {"mean_abs_delta": sum(deltas) / len(deltas), "max_abs_delta": max(deltas), "num_tokens": len(deltas)}


def score(model: str | None, kwargs: dict, sequences: list[list[int]]) -> tuple[list[tuple[list[float], list[int]]], str]:
    """Score each of ``sequences`` with a fresh engine, then free it (two engines need not fit at once)."""
    llm = LLM(model, **{"max_model_len": max(map(len, sequences)) + 1, **kwargs})
    scored = [sequence_logprobs(llm, ids) for ids in sequences]
    dtype = str(llm.engine.runtime.dtype).removeprefix("torch.")
    del llm
    gc.collect()
    return scored, dtype


def continue_with(model: str | None, kwargs: dict, prompt: list[int], num_tokens: int) -> tuple[list[int], list[float], str]:
    llm = LLM(model, **{"max_model_len": len(prompt) + num_tokens + 1, **kwargs})
    generated, logprobs = greedy_continuation(llm, prompt, num_tokens)
    dtype = str(llm.engine.runtime.dtype).removeprefix("torch.")
    del llm
    gc.collect()
    return generated, logprobs, dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER", DEFAULT_LLAMA_SERVER))
    parser.add_argument("--gguf", default=None, help="llama.cpp's model (default: the default model's GGUF)")
    parser.add_argument("--model", default=None, help="ours and the reference (default: the default model)")
    parser.add_argument("--reference-kwargs", type=json.loads, default={"dtype": "float32"})
    parser.add_argument("--ours-kwargs", type=json.loads, default={})
    parser.add_argument("--prompt-len", type=int, default=140)
    parser.add_argument("--gen-len", type=int, default=64, help="tokens llama.cpp generates, scored by all")
    parser.add_argument("--text", type=Path, default=TEXT)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/logprob_drift.json"))
    args = parser.parse_args()
    if not Path(args.llama_server).is_file():
        parser.error(f"no llama-server at {args.llama_server} (build it with shared/tools/build_llama_server.sh)")
    gguf = args.gguf or str(default_gguf_file())

    prompt = prompt_ids(load_tokenizer(resolve_model(args.model)), args.text.read_text(), args.prompt_len)
    port = free_port()
    command = llama_server_command(args.llama_server, gguf, port, 1, args.threads,
                                   max(CTX_PER_SLOT, args.prompt_len + args.gen_len))
    log_path = Path(tempfile.gettempdir()) / "logprob_drift" / "llama-server.log"
    with running(command, port, log_path, args.startup_timeout) as url:
        generated, llama_logprobs = llama_continuation(url, prompt, args.gen_len)

    ours_generated, ours_logprobs, ours_dtype = continue_with(args.model, args.ours_kwargs, prompt, args.gen_len)
    llama_ids, ours_ids = prompt + generated, prompt + ours_generated
    [(reference, reference_ranks), (reference_ours, _)], reference_dtype = score(
        args.model, args.reference_kwargs, [llama_ids, ours_ids])
    [(ours_prefill, _)], _ = score(args.model, args.ours_kwargs, [llama_ids])
    gen = slice(len(prompt) - 1, None)  # ids[1:] index of each generated token
    modes = {"engine": {**drift(ours_logprobs, reference_ours[gen]), "kwargs": args.ours_kwargs, "dtype": ours_dtype,
                        "generated_token_ids": ours_generated},
             "llama.cpp": {**drift(llama_logprobs, reference[gen]), "gguf": gguf, "command": shlex.join(command),
                           "generated_token_ids": generated}}
    results = {
        **run_info(), "text": str(args.text), "prompt_len": len(prompt), "gen_len": len(generated),
        "reference": {"kwargs": args.reference_kwargs, "dtype": reference_dtype},
        "modes": modes,
        "ratio_engine_over_llama_cpp": modes["engine"]["mean_abs_delta"] / modes["llama.cpp"]["mean_abs_delta"],
        # how often llama.cpp's greedy token is also the reference's argmax: low means the
        # continuation drifted to text the reference finds unlikely
        "reference_argmax_share": sum(rank == 1 for rank in reference_ranks[gen]) / len(generated),
        "engine_prefill_on_llama_cpp_tokens": drift(ours_prefill[gen], reference[gen]),
        "engine_prefill_on_prompt": drift(ours_prefill[: len(prompt) - 1], reference[: len(prompt) - 1]),
    }
    for name, mode in modes.items():
        print(f"{name}: mean |d logprob| {mode['mean_abs_delta']:.4f} nats, max {mode['max_abs_delta']:.4f} "
              f"over {mode['num_tokens']} generated tokens")
    print(f"ours / llama.cpp: {results['ratio_engine_over_llama_cpp']:.2f}; our prefill path on the prompt: "
          f"{results['engine_prefill_on_prompt']['mean_abs_delta']:.4f}; "
          f"reference argmax share {results['reference_argmax_share']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
