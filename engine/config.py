"""User configuration of an engine: frozen, validated at construction, never written back.

Facts derived at start-up (the device, the dtype, the number of KV blocks) live in
``RuntimeInfo`` and are logged once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from engine.kernels import CHOICES as KERNEL_CHOICES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_CPU_KV_CACHE_GB = 4.0
QUANTIZATION_CHOICES = (None, "awq", "gptq", "none")


@dataclass(frozen=True)
class EngineConfig:
    """Every ``LLM(...)`` keyword; also the flags of the CLI (with dashes)."""

    model: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    quantization: str | None = None  # None: as the checkpoint says; "none": dequantized weights (GGUF, AWQ, GPTQ)
    seed: int = 0
    tensor_parallel_size: int = 1
    kv_cache_memory_gb: float | None = None
    # exact pool size; a block holds block_size tokens of one KV cache group's layers (all layers but for
    # sliding-window models: scheduler/kv_groups.py)
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False  # no compiled decode step on the CPU, no CUDA graphs on CUDA
    kernels: str | None = None  # "auto" (Triton on CUDA, torch elsewhere), "triton", "torch"; None: $ENGINE_KERNELS
    chat_template: str | None = None  # a Jinja chat template, or a file holding one, instead of the model's
    # a token's logits do not depend on its batch, chunking or cache hits (CPU only; costs speed: README)
    batch_invariant: bool = False

    @classmethod
    def from_kwargs(cls, model: str | None = None, **kwargs: Any) -> "EngineConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown engine option(s) {unknown}; known options: {sorted(known)}")
        return cls(model=model, **kwargs)

    def __post_init__(self) -> None:
        if self.dtype != "auto" and DTYPE_ALIASES.get(self.dtype, self.dtype) not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1) or self.block_size > 128:
            raise ValueError(f"block_size must be a power of two from 1 to 128, got {self.block_size}")
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "num_kv_blocks"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_memory_gb is not None and self.kv_cache_memory_gb <= 0:
            raise ValueError(f"kv_cache_memory_gb must be positive, got {self.kv_cache_memory_gb}")
        if isinstance(self.tensor_parallel_size, bool) or not isinstance(self.tensor_parallel_size, int) \
                or self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be a positive integer, got {self.tensor_parallel_size!r}")
        if self.kernels is not None and self.kernels not in KERNEL_CHOICES:
            raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {self.kernels!r}")
        if self.quantization not in QUANTIZATION_CHOICES:
            raise ValueError(f"quantization must be None (read from the checkpoint), 'awq', 'gptq' or 'none' "
                             f"(compute with dequantized weights), got {self.quantization!r}")

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but torch sees no CUDA device")
        return torch.device(self.device)

    def resolve_dtype(self, device: torch.device, checkpoint_dtype: torch.dtype | None) -> torch.dtype:
        """``auto``: on CPU bf16 where the cores compute it natively (twice fp32's matmul rate), else
        fp32; on CUDA the checkpoint's 16-bit dtype, else bf16."""
        if self.dtype != "auto":
            return DTYPES[DTYPE_ALIASES.get(self.dtype, self.dtype)]
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        return checkpoint_dtype if checkpoint_dtype in (torch.float16, torch.bfloat16) else torch.bfloat16


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them torch emulates bf16 matmuls, slower than fp32."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class RuntimeInfo:
    """What the engine decided at start-up from the config, the model and the machine."""

    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    max_num_batched_tokens: int
    num_kv_blocks: int
    kv_cache_bytes: int

    def describe(self) -> str:
        return (
            f"device={self.device} dtype={str(self.dtype).removeprefix('torch.')} "
            f"max_model_len={self.max_model_len} max_num_batched_tokens={self.max_num_batched_tokens} "
            f"kv_blocks={self.num_kv_blocks} ({self.kv_cache_bytes / 2**30:.2f} GiB)"
        )
