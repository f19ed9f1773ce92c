"""Calibration activations: what each decoder linear sees on sample text, via transformers hooks.

GPTQ needs each layer's input Hessian ``X^T X``; AWQ needs input samples and per-channel mean
magnitudes. The reference model is transformers' own, so calibration never depends on our
kernels.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

CALIBRATION_TEXT = Path(__file__).with_name("calibration.txt")


@dataclass
class LayerInputs:
    hessian: torch.Tensor  # [K, K] float64: sum of x x^T
    num_tokens: int = 0
    samples: list[torch.Tensor] = field(default_factory=list)  # kept only when asked (AWQ)


@dataclass
class DecoderInputs:
    """What the model hands one decoder layer for one calibration sequence."""

    hidden: torch.Tensor  # [1, T, hidden]
    kwargs: dict  # position embeddings, mask, positions: the same for every layer


def calibration_token_ids(tokenizer, text: str | None, num_tokens: int, seq_len: int) -> list[list[int]]:
    ids = tokenizer.encode(text if text is not None else CALIBRATION_TEXT.read_text())
    ids = ids[:num_tokens]
    return [ids[i : i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i : i + seq_len]) > 1]


@contextmanager
def _record_linear_inputs(module: torch.nn.Module, keep_samples: bool):
    """Hooks on the quantizable linears under ``module``; yields ``{name: LayerInputs}`` as they fill."""
    from .checkpoint import QUANTIZED_LINEARS

    stats: dict[str, LayerInputs] = {}
    hooks = []
    for name, linear in module.named_modules():
        if isinstance(linear, torch.nn.Linear) and name.rsplit(".", 1)[-1] in QUANTIZED_LINEARS:
            stats[name] = LayerInputs(torch.zeros(linear.in_features, linear.in_features, dtype=torch.float64))

            def hook(mod, args, _out, name=name):
                x = args[0].reshape(-1, args[0].shape[-1])
                entry = stats[name]
                entry.hessian += x.T.double() @ x.double()
                entry.num_tokens += x.shape[0]
                if keep_samples:
                    entry.samples.append(x.float())

            hooks.append(linear.register_forward_hook(hook))
    try:
        yield stats
    finally:
        for handle in hooks:
            handle.remove()


@torch.no_grad()
def collect_inputs(model, sequences: list[list[int]], keep_samples: bool) -> dict[str, LayerInputs]:
    """Run ``model`` (transformers, fp32) once over the sequences and gather every decoder linear's inputs."""
    with _record_linear_inputs(model, keep_samples) as stats:
        for ids in sequences:
            model(torch.tensor([ids]), use_cache=False)
    return stats


class _Captured(Exception):
    pass


@torch.no_grad()
def first_layer_inputs(model, sequences: list[list[int]]) -> list[DecoderInputs]:
    """The hidden states (and arguments) entering decoder layer 0, one entry per sequence.

    Layer-by-layer calibration then runs one layer at a time on these, instead of the whole
    model once per layer.
    """
    captured: list[DecoderInputs] = []

    def stop(_module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append(DecoderInputs(hidden, kwargs))
        raise _Captured

    handle = model.model.layers[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        for ids in sequences:
            try:
                model(torch.tensor([ids]), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def layer_hessians(layer: torch.nn.Module, inputs: list[DecoderInputs]) -> dict[str, LayerInputs]:
    """Input statistics of ``layer``'s linears (names relative to the layer) over ``inputs``."""
    with _record_linear_inputs(layer, keep_samples=False) as stats:
        for entry in inputs:
            layer(entry.hidden, **entry.kwargs)
    return stats


@torch.no_grad()
def run_layer(layer: torch.nn.Module, inputs: list[DecoderInputs]) -> list[DecoderInputs]:
    """The next layer's inputs: ``layer`` applied to each entry."""
    outputs = []
    for entry in inputs:
        out = layer(entry.hidden, **entry.kwargs)
        outputs.append(DecoderInputs(out[0] if isinstance(out, tuple) else out, entry.kwargs))
    return outputs
