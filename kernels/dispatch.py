"""Pick the Triton kernel or the torch reference for each call, by ``ENGINE_KERNELS``.

``auto`` (default): Triton on CUDA tensors, the reference elsewhere. ``triton``: always
Triton (on CPU tensors that needs ``TRITON_INTERPRET=1``). ``torch``: always the reference.
The variable is read at call time so tests can switch it per case.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch

CHOICES = ("auto", "triton", "torch")


def kernel_choice() -> str:
    choice = os.environ.get("ENGINE_KERNELS", "auto")
    if choice not in CHOICES:
        raise ValueError(f"ENGINE_KERNELS must be one of {CHOICES}, got {choice!r}")
    return choice


def dispatch(reference_fn: Callable, triton_fn: Callable | None = None) -> Callable:
    """An op that calls ``triton_fn`` or ``reference_fn`` (same signature) per ``ENGINE_KERNELS``.

    Ops with no Triton version yet always run the reference.
    """
    if triton_fn is None:
        return reference_fn

    @functools.wraps(reference_fn)
    def op(*args, **kwargs):
        choice = kernel_choice()
        first = args[0] if args else next(iter(kwargs.values()))
        use_triton = choice == "triton" or (choice == "auto" and isinstance(first, torch.Tensor) and first.is_cuda)
        return (triton_fn if use_triton else reference_fn)(*args, **kwargs)

    return op
