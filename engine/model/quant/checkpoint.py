"""Round-to-nearest group quantization and writing AWQ / GPTQ checkpoints in the producers' layout.

The numbers follow the producers (AutoAWQ's min/max per group; GPTQ's quantizer), so a file we
write loads anywhere those load. GPTQ proper and AWQ's scale search change the weights fed to
this step, never the format.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.kernels.quant_pack import pack_awq, pack_gptq

from .format import QuantFormat

QUANTIZED_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Quantized:
    codes: torch.Tensor  # int [K, N]
    zeros: torch.Tensor  # int [G, N], true zero points
    scales: torch.Tensor  # fp16 [G, N]
    g_idx: torch.Tensor  # int32 [K]

    def dequantize(self) -> torch.Tensor:
        """``[K, N]`` fp32: what a loader computes from the packed file."""
        groups = self.g_idx.long()
        return (self.codes - self.zeros[groups]).float() * self.scales[groups].float()


def group_params(weights: torch.Tensor, spec: QuantFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (fp16-rounded) and true zero of each column of ``weights [rows, N]`` (one group)."""
    top = (1 << spec.bits) - 1
    w = weights.float()
    if spec.method == "awq":  # AutoAWQ: plain min/max
        low, high = w.min(0).values, w.max(0).values
        scale = ((high - low).clamp(min=1e-5) / top).half().float()
        zero = (-torch.round(low / scale)).clamp(0, top)
    elif spec.sym:  # GPTQ symmetric: zero fixed at the middle code
        scale = (2 * w.abs().max(0).values / top).clamp(min=1e-8).half().float()
        zero = torch.full_like(scale, float(1 << (spec.bits - 1)))
    else:  # GPTQ asymmetric: the range always includes 0
        low, high = w.min(0).values.clamp(max=0), w.max(0).values.clamp(min=0)
        scale = ((high - low) / top).clamp(min=1e-8).half().float()
        zero = torch.round(-low / scale).clamp(0, top)
    return scale, zero


def quantize_rtn(weight: torch.Tensor, spec: QuantFormat, order: torch.Tensor | None = None) -> Quantized:
    """Round-to-nearest of an HF weight ``[N, K]`` in groups of input rows.

    ``order`` (GPTQ act-order) lists the input rows in the order groups are cut.
    """
    w = weight.float().T  # [K, N]
    k, n = w.shape
    group_size = k if spec.group_size == -1 else spec.group_size
    order = torch.arange(k) if order is None else order
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[order] = (torch.arange(k) // group_size).to(torch.int32)
    groups = k // group_size
    scales = torch.empty(groups, n)
    zeros = torch.empty(groups, n)
    codes = torch.empty(k, n, dtype=torch.int64)
    top = (1 << spec.bits) - 1
    for group in range(groups):
        rows = order[group * group_size : (group + 1) * group_size]
        scale, zero = group_params(w[rows], spec)
        scales[group], zeros[group] = scale, zero
        codes[rows] = (torch.round(w[rows] / scale) + zero).clamp(0, top).long()
    return Quantized(codes, zeros.long(), scales.half(), g_idx)


def pack(q: Quantized, spec: QuantFormat) -> dict[str, torch.Tensor]:
    if spec.method == "awq":
        qweight, qzeros = pack_awq(q.codes, q.zeros)
        return {"qweight": qweight, "qzeros": qzeros, "scales": q.scales}
    qweight, qzeros = pack_gptq(q.codes, q.zeros, spec.bits, spec.v1_zeros)
    return {"qweight": qweight, "qzeros": qzeros, "scales": q.scales, "g_idx": q.g_idx}


def is_quantized_linear(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in QUANTIZED_LINEARS and ".layers." in name


def write_checkpoint(source: Path, out: Path, tensors: dict[str, torch.Tensor], spec: QuantFormat) -> None:
    """A folder like the producers write: config.json with quantization_config, one safetensors, tokenizer."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = spec.to_quantization_config()
    config["torch_dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    for file in source.iterdir():
        if file.is_file() and file.suffix != ".safetensors" and file.name != "config.json":
            shutil.copy(file, out / file.name)


def quantize_folder_rtn(source: Path, out: Path, spec: QuantFormat, seed: int = 0) -> None:
    """Round-to-nearest every decoder linear of a safetensors model folder into an AWQ/GPTQ checkpoint.

    With ``desc_act`` the groups are cut in a seeded random row order (what act-order files look
    like; GPTQ proper orders rows by the Hessian diagonal). Layers that read the same input
    (q/k/v, gate/up) share one order, as GPTQ's shared Hessian gives them.
    """
    from engine.model.loader.weights import iter_safetensors

    generator = torch.Generator().manual_seed(seed)
    orders: dict[str, torch.Tensor] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in iter_safetensors(source):
        if not is_quantized_linear(name):
            tensors[name] = tensor
            continue
        order = None
        if spec.desc_act:
            key = _input_key(name)
            if key not in orders:
                orders[key] = torch.randperm(tensor.shape[1], generator=generator)
            order = orders[key]
        packed = pack(quantize_rtn(tensor, spec, order), spec)
        prefix = name.removesuffix(".weight")
        tensors.update({f"{prefix}.{key}": value for key, value in packed.items()})
    write_checkpoint(source, out, tensors, spec)


_SAME_INPUT = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


def _input_key(weight_name: str) -> str:
    """Linears with the same key read the same activations."""
    module, kind = weight_name.removesuffix(".weight").rsplit(".", 1)
    return f"{module}.{_SAME_INPUT.get(kind, kind)}"
