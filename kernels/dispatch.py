"""The kernel set an engine runs: every op of the contract from one implementation, chosen once.

``torch``: the references (the CPU path and the test oracle). ``triton``: the Triton kernels (on CPU
tensors only under ``TRITON_INTERPRET=1``, set before the first Triton call). ``auto``: Triton on
CUDA, torch elsewhere. An engine resolves its choice at start-up (``EngineConfig.kernels``, else
``ENGINE_KERNELS``) and its modules hold the set's functions, so no op looks anything up per call.
The Triton modules are imported only when a Triton set is built: a CPU-only process never pays
for importing or compiling them.

``torch-rows`` is not a user's choice but the batch-invariant engine's (``EngineConfig.batch_invariant``):
the references, with every attention row computed alone by the C++ kernel of ``cpu.py``.

The attention ops take an optional ``plan``: what every layer of a step would otherwise derive
alike from the step's metadata (the torch set: gather slots and masks; Triton: launch sizes),
built once per step by the set's ``plan_decode`` / ``plan_prefill``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass, fields
from typing import Callable

import torch

from . import reference

CHOICES = ("auto", "triton", "torch")
_TRITON_PATHS = {
    "store_kv": "cache_ops:store_kv_triton",
    "paged_attention_decode": "paged_attention:paged_attention_decode_triton",
    "paged_attention_prefill": "paged_attention:paged_attention_prefill_triton",
    "plan_decode": "paged_attention:plan_decode_triton",
    "plan_prefill": "paged_attention:plan_prefill_triton",
    "rms_norm": "elementwise:rms_norm_triton",
    "rotary_embedding": "elementwise:rotary_embedding_triton",
    "silu_and_mul": "elementwise:silu_and_mul_triton",
    "gelu_tanh_and_mul": "elementwise:gelu_tanh_and_mul_triton",
    "w4a16_gemm": "quant_gemm:w4a16_gemm_triton",
}


@dataclass(frozen=True)
class KernelSet:
    name: str  # "torch" or "triton"
    store_kv: Callable
    paged_attention_decode: Callable
    paged_attention_prefill: Callable
    plan_decode: Callable
    plan_prefill: Callable
    rms_norm: Callable
    rotary_embedding: Callable
    silu_and_mul: Callable
    gelu_tanh_and_mul: Callable
    w4a16_gemm: Callable


OPS = tuple(f.name for f in fields(KernelSet) if f.name != "name")


def resolve_kernels(choice: str | None, device: torch.device) -> str:
    """``choice`` (None: ``$ENGINE_KERNELS``, else ``auto``) -> the set to run on ``device``."""
    if choice is None:
        choice = os.environ.get("ENGINE_KERNELS", "auto")
    if choice not in CHOICES:
        raise ValueError(f"kernels (ENGINE_KERNELS) must be one of {CHOICES}, got {choice!r}")
    if choice == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return choice


def kernel_set(name: str) -> KernelSet:
    """The set's functions (Python caches the modules, so building one again costs ~nothing)."""
    if name == "torch":
        return KernelSet(name, **{op: getattr(reference, op) for op in OPS})
    if name == "triton":
        return KernelSet(name, **{op: _load(path) for op, path in _TRITON_PATHS.items()})
    if name == "torch-rows":
        from . import cpu

        cpu.load()  # built on a machine's first use (a compiler run of about a minute), then loaded in milliseconds
        return dataclasses.replace(kernel_set("torch"), name=name, paged_attention_decode=cpu.paged_attention_decode,
                                   plan_decode=cpu.no_plan)
    raise ValueError(f"no kernel set {name!r}; sets: torch, triton, torch-rows")


def _load(path: str) -> Callable:
    module, name = path.split(":")
    return getattr(importlib.import_module(f".triton.{module}", __package__), name)
