"""Pick the Triton kernel or the torch reference for each call, by ``ENGINE_KERNELS``.

``auto`` (default): Triton on CUDA tensors, the reference elsewhere. ``triton``: always
Triton (on CPU tensors that needs ``TRITON_INTERPRET=1``, set before the first Triton call).
``torch``: always the reference. The variable is read at call time so tests can switch it
per case; the Triton modules are imported on first use, so a CPU-only process never pays
for compiling or even importing them.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Callable

import torch

CHOICES = ("auto", "triton", "torch")


def kernel_choice() -> str:
    choice = os.environ.get("ENGINE_KERNELS", "auto")
    if choice not in CHOICES:
        raise ValueError(f"ENGINE_KERNELS must be one of {CHOICES}, got {choice!r}")
    return choice


def _load(path: str) -> Callable:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def dispatch(reference_fn: Callable, triton_path: str) -> Callable:
    """An op that calls the Triton function at ``module:name`` or ``reference_fn`` (same signature)."""
    triton_fn = functools.cache(lambda: _load(triton_path))

    @functools.wraps(reference_fn)
    def op(*args, **kwargs):
        choice = kernel_choice()
        first = args[0] if args else next(iter(kwargs.values()))
        use_triton = choice == "triton" or (choice == "auto" and isinstance(first, torch.Tensor) and first.is_cuda)
        return (triton_fn() if use_triton else reference_fn)(*args, **kwargs)

    op.reference = reference_fn
    op.triton = lambda *a, **k: triton_fn()(*a, **k)
    return op
