"""``quantize(model, out, method=...)``: write an AWQ or GPTQ checkpoint from a full-precision folder.

Methods: "rtn" (round to nearest), "gptq" (error-compensating, Hessian from calibration text;
act-order on by default: on SmolLM2 plain-order GPTQ lands behind rounding, see
benchmarks/results/quant.json), "awq" (activation-aware scales, then round to nearest). The
result loads here without flags, and in any engine that reads the producers' formats.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from engine.model.loader.weights import iter_safetensors

from .awq import search_scales
from .calibration import calibration_token_ids, collect_inputs, first_layer_inputs, layer_hessians, run_layer
from .checkpoint import Quantized, is_quantized_linear, pack, quantize_rtn, write_checkpoint
from .format import QuantFormat
from .gptq import gptq_quantize

logger = logging.getLogger(__name__)
METHODS = ("rtn", "gptq", "awq")


def quantize(model: str | Path, out: str | Path, method: str = "gptq", bits: int = 4, group_size: int = 128,
             sym: bool = False, desc_act: bool = True, calibration_text: str | None = None,
             num_calibration_tokens: int = 2048, seq_len: int = 512) -> Path:
    """Quantize every decoder linear of the safetensors folder ``model`` into ``out``; returns ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, out = Path(model), Path(out)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    fmt = "awq" if method == "awq" else "gptq"
    if fmt == "awq" and bits != 4:
        raise ValueError(f"AWQ is 4-bit; got bits={bits}")
    spec = QuantFormat(fmt, bits, group_size, sym=sym and fmt == "gptq", desc_act=desc_act and method == "gptq")
    started = time.monotonic()
    tensors = dict(iter_safetensors(source))
    quantized: dict[str, Quantized] = {}
    if method != "rtn":
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
        sequences = calibration_token_ids(tokenizer, calibration_text, num_calibration_tokens, seq_len)
        logger.info("calibrating on %d tokens", sum(len(s) for s in sequences))
    if method == "awq":
        _apply_awq_scales(tensors, collect_inputs(hf_model, sequences, keep_samples=True), spec)
    if method == "gptq":
        quantized = _gptq_sequential(hf_model, sequences, spec)
    names = [n for n in tensors if is_quantized_linear(n)]
    for name in tqdm(names, desc=f"pack ({method})", unit="layer"):
        weight = tensors.pop(name)
        module = name.removesuffix(".weight")
        result = quantized.get(module) or quantize_rtn(weight, spec)
        tensors.update({f"{module}.{key}": value for key, value in pack(result, spec).items()})
    write_checkpoint(source, out, tensors, spec)
    logger.info("wrote %s (%s, %d-bit, group %d) in %.1f s", out, method, bits, group_size, time.monotonic() - started)
    return out


@torch.no_grad()
def _gptq_sequential(hf_model, sequences: list[list[int]], spec: QuantFormat) -> dict[str, Quantized]:
    """GPTQ one decoder layer at a time, each calibrated on the outputs of the layers before it as
    quantized (their weights are swapped for the dequantized ones), so errors do not compound unseen.

    Only one layer runs per pass: its inputs are kept between layers, as GPTQ's reference code does.
    """
    results: dict[str, Quantized] = {}
    inputs = first_layer_inputs(hf_model, sequences)
    for index, layer in enumerate(tqdm(hf_model.model.layers, desc="gptq", unit="layer")):
        modules = dict(layer.named_modules())
        for name, entry in layer_hessians(layer, inputs).items():
            linear = modules[name]
            quantized = gptq_quantize(linear.weight.data, 2 * entry.hessian / entry.num_tokens, spec)
            linear.weight.data = quantized.dequantize().T.to(linear.weight.dtype).contiguous()
            results[f"model.layers.{index}.{name}"] = quantized
        inputs = run_layer(layer, inputs)
    return results


def _apply_awq_scales(tensors: dict[str, torch.Tensor], stats, spec: QuantFormat) -> None:
    """Scale each input-sharing group of linears up by AWQ's search, and the op feeding them down.

    q/k/v take their input from input_layernorm, gate/up from post_attention_layernorm, down from
    up_proj's output; o_proj (fed by attention) keeps plain rounding.
    """
    layers = sorted({n.split(".layers.")[1].split(".")[0] for n in tensors if ".layers." in n}, key=int)
    for index in tqdm(layers, desc="awq scale search", unit="layer"):
        prefix = f"model.layers.{index}"
        groups = [
            ([f"{prefix}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")], f"{prefix}.input_layernorm.weight", False),
            ([f"{prefix}.mlp.{p}" for p in ("gate_proj", "up_proj")], f"{prefix}.post_attention_layernorm.weight", False),
            ([f"{prefix}.mlp.down_proj"], f"{prefix}.mlp.up_proj.weight", True),
        ]
        for linears, feeder, feeder_is_linear in groups:
            inputs = torch.cat(stats[linears[0]].samples)
            scales = search_scales([tensors[f"{name}.weight"] for name in linears], inputs, spec)
            for name in linears:
                weight = tensors[f"{name}.weight"]
                tensors[f"{name}.weight"] = (weight.float() * scales).to(weight.dtype)
            feeder_weight = tensors[feeder].float()
            divided = feeder_weight / scales[:, None] if feeder_is_linear else feeder_weight / scales
            tensors[feeder] = divided.to(tensors[feeder].dtype)
