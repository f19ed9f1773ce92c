"""Calibration activations: what each decoder linear sees on sample text, via transformers hooks.

GPTQ needs each layer's input Hessian ``X^T X``; AWQ needs input samples and per-channel mean
magnitudes. The reference model is transformers' own, so calibration never depends on our
kernels. Activations come from the full-precision model in one pass (not layer by layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

CALIBRATION_TEXT = Path(__file__).with_name("calibration.txt")


@dataclass
class LayerInputs:
    hessian: torch.Tensor  # [K, K] float64: sum of x x^T
    num_tokens: int = 0
    samples: list[torch.Tensor] = field(default_factory=list)  # kept only when asked (AWQ)


def calibration_token_ids(tokenizer, text: str | None, num_tokens: int, seq_len: int) -> list[list[int]]:
    ids = tokenizer.encode(text if text is not None else CALIBRATION_TEXT.read_text())
    ids = ids[:num_tokens]
    return [ids[i : i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i : i + seq_len]) > 1]


@torch.no_grad()
def collect_inputs(model, sequences: list[list[int]], keep_samples: bool, layer: int | None = None) -> dict[str, LayerInputs]:
    """Run ``model`` (transformers, fp32) on the sequences and gather decoder linears' inputs.

    ``layer`` limits it to one decoder layer's linears (sequential GPTQ calibrates each layer on
    the outputs of the layers already quantized).
    """
    from .checkpoint import QUANTIZED_LINEARS

    stats: dict[str, LayerInputs] = {}
    hooks = []
    wanted = f".layers.{layer}." if layer is not None else ".layers."
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in QUANTIZED_LINEARS and wanted in name:
            stats[name] = LayerInputs(torch.zeros(module.in_features, module.in_features, dtype=torch.float64))

            def hook(mod, args, _out, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                entry = stats[name]
                entry.hessian += x.T @ x
                entry.num_tokens += x.shape[0]
                if keep_samples:
                    entry.samples.append(args[0].reshape(-1, args[0].shape[-1]).float())

            hooks.append(module.register_forward_hook(hook))
    try:
        for ids in sequences:
            model(torch.tensor([ids]))
    finally:
        for handle in hooks:
            handle.remove()
    return stats
