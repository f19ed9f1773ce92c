"""engine: an LLM serving engine with a paged KV cache and continuous batching.

``from engine import LLM, SamplingParams`` for offline generation; ``engine serve`` for HTTP.

``engine`` is the distribution's one import root. The repository keeps the design's top-level
folders, and pyproject.toml's ``package-dir`` installs them beneath it:

    api/        -> engine.api         HTTP and gRPC front ends, the CLI
    engine/     -> engine             this package: the engine, in folders by job
    scheduler/  -> engine.scheduler   continuous batching and KV blocks (pure Python)
    kernels/    -> engine.kernels     Triton kernels and their torch references

Inside engine/, each folder imports only the ones below it (tests/test_layering.py):

    frontend/    LLM and AsyncLLMEngine: the Python front ends
    step/        LLMEngine's step loop, the model runner, compiled and graphed steps, tensor parallel ranks
    processing/  text and tokens in, RequestOutputs out: tokenizer, detokenizer, stop strings
    sampling/    SamplingParams, the batched sampler, grammar-constrained decoding
    model/       the decoder, its layers, loaders (safetensors, GGUF), quantized linears

The public names load on first use, so ``import engine.scheduler`` or ``engine --help`` does not
pay for torch and the model code.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from engine.import_path import installed_packages_first

logging.getLogger(__name__).addHandler(logging.NullHandler())
installed_packages_first()  # in a checkout, its kernels/ must not shadow Hugging Face's `kernels` (see import_path)

_EXPORTS = {
    "AsyncLLMEngine": "engine.frontend.async_engine",
    "EngineDeadError": "engine.frontend.async_engine",
    "LLM": "engine.frontend.llm",
    "InvalidPromptError": "engine.frontend.llm",
    "LLMEngine": "engine.step.llm_engine",
    "EngineConfig": "engine.config",
    "CompletionOutput": "engine.processing.outputs",
    "RequestMetrics": "engine.processing.outputs",
    "RequestOutput": "engine.processing.outputs",
    "InvalidSamplingParam": "engine.sampling.sampling_params",
    "RequestOutputKind": "engine.sampling.sampling_params",
    "SamplingParams": "engine.sampling.sampling_params",
    "StructuredOutputsParams": "engine.sampling.sampling_params",
    "RequestRejected": "engine.scheduler",
    "quantize": "engine.model.quant.quantize",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from engine.config import EngineConfig
    from engine.frontend.async_engine import AsyncLLMEngine, EngineDeadError
    from engine.frontend.llm import LLM, InvalidPromptError
    from engine.model.quant.quantize import quantize
    from engine.processing.outputs import CompletionOutput, RequestMetrics, RequestOutput
    from engine.sampling.sampling_params import (
        InvalidSamplingParam,
        RequestOutputKind,
        SamplingParams,
        StructuredOutputsParams,
    )
    from engine.scheduler import RequestRejected
    from engine.step.llm_engine import LLMEngine


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
