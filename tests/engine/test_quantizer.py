"""Our quantizer: GPTQ and AWQ beat round-to-nearest where they claim to, and their files load and run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import torch

from engine import LLM, SamplingParams, quantize
from engine.model.quant.awq import search_scales
from engine.model.quant.checkpoint import quantize_rtn
from engine.model.quant.format import QuantFormat
from engine.model.quant.gptq import gptq_quantize


def _layer_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(64, 64, generator=gen)
    x = torch.randn(2048, 64, generator=gen) @ mixing * torch.linspace(0.1, 3.0, 64)  # correlated, uneven channels
    weight = torch.randn(48, 64, generator=gen)
    return x, weight


def _output_error(x, weight, dequantized_kn) -> float:
    return float((x @ weight.T - x @ dequantized_kn).pow(2).mean())


def test_gptq_reduces_the_layer_output_error_of_rounding():
    x, weight = _layer_problem()
    hessian = 2 * x.double().T @ x.double() / x.shape[0]
    for spec in (QuantFormat("gptq", 4, 16), QuantFormat("gptq", 4, 16, desc_act=True), QuantFormat("gptq", 8, -1, sym=True)):
        rtn = _output_error(x, weight, quantize_rtn(weight, spec).dequantize())
        gptq = _output_error(x, weight, gptq_quantize(weight, hessian, spec).dequantize())
        assert gptq < 0.8 * rtn, (spec, gptq, rtn)


def test_gptq_act_order_groups_follow_the_hessian_diagonal():
    x, weight = _layer_problem(1)
    hessian = 2 * x.double().T @ x.double() / x.shape[0]
    quantized = gptq_quantize(weight, hessian, QuantFormat("gptq", 4, 16, desc_act=True))
    strongest = torch.argsort(torch.diag(hessian), descending=True)[:16]
    assert set(quantized.g_idx[strongest].tolist()) == {0}  # the 16 strongest inputs form group 0
    assert sorted(torch.bincount(quantized.g_idx.long()).tolist()) == [16] * 4


def test_awq_search_never_does_worse_than_plain_rounding_on_its_data():
    x, weight = _layer_problem(2)
    spec = QuantFormat("awq", 4, 16)
    scales = search_scales([weight], x, spec)
    searched = _output_error(x, weight, (quantize_rtn(weight * scales, spec).dequantize().T / scales).T)
    plain = _output_error(x, weight, quantize_rtn(weight, spec).dequantize())
    assert searched < plain


def _perplexity(folder: Path, ids: list[int]) -> float:
    llm = LLM(str(folder), max_model_len=512, enforce_eager=True)
    out = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    nll = -sum(entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], ids[1:])) / (len(ids) - 1)
    return math.exp(nll)


def test_tiny_model_quantized_perplexity_against_rtn(tiny_model_factory, tmp_path):
    fp = tiny_model_factory("llama", initializer_range=0.05)
    # Scored on text the fp model samples itself: a random model's perplexity on English says
    # nothing, but on its own samples the fp model sets the floor and a quantized copy's excess
    # measures how far its next-token distributions moved (their KL divergence).
    sample = LLM(str(fp), max_model_len=512, enforce_eager=True).generate(
        {"prompt_token_ids": [1]}, SamplingParams(max_tokens=500, temperature=1.0, seed=1, ignore_eos=True),
        use_tqdm=False)[0]
    ids = [1] + sample.outputs[0].token_ids
    # The command line for one of them, as users run it (GPTQ with act-order, its default).
    done = subprocess.run([sys.executable, "-m", "engine", "quantize", str(fp), str(tmp_path / "gptq"),
                           "--method", "gptq", "--group-size", "32"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    quantize(fp, tmp_path / "awq", method="awq", group_size=32)
    quantize(fp, tmp_path / "rtn", method="rtn", group_size=32)
    reference = _perplexity(fp, ids)
    gap = {name: abs(_perplexity(tmp_path / name, ids) - reference) for name in ("rtn", "gptq", "awq")}
    assert gap["gptq"] < gap["rtn"] and gap["awq"] < gap["rtn"], gap
