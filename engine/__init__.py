"""engine: an LLM serving engine with a paged KV cache and continuous batching.

``from engine import LLM, SamplingParams`` for offline generation; ``engine serve`` for HTTP.
"""

import logging

from scheduler import RequestRejected

from .async_engine import AsyncLLMEngine, EngineDeadError
from .config import EngineConfig
from .llm import LLM, InvalidPromptError
from .llm_engine import LLMEngine
from .outputs import CompletionOutput, RequestMetrics, RequestOutput
from .quant.quantize import quantize
from .sampling_params import InvalidSamplingParam, RequestOutputKind, SamplingParams, StructuredOutputsParams

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AsyncLLMEngine",
    "EngineDeadError",
    "CompletionOutput",
    "EngineConfig",
    "InvalidPromptError",
    "InvalidSamplingParam",
    "RequestOutputKind",
    "RequestRejected",
    "LLM",
    "LLMEngine",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "StructuredOutputsParams",
    "quantize",
]
