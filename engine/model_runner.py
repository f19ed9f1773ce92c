"""Runs one step of the model: owns the model weights and the KV cache tensors."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from scheduler import SchedulerOutput

from .forward_batch import ForwardBatch
from .kv_cache import KVCache
from .loader import ModelSource, iter_weights
from .models.registry import build_model

logger = logging.getLogger(__name__)


@dataclass
class StepResult:
    """The logits of every request that samples this step, row i for ``request_ids[i]``."""

    request_ids: list[str]
    logits: torch.Tensor  # fp32 [num_sampled, vocab]


class ModelRunner:
    def __init__(self, source: ModelSource, hf_config, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        with torch.device("meta"):  # no random init of weights that are overwritten at once
            model = build_model(hf_config)
        model = model.to(dtype).to_empty(device=device)
        model.load_weights(iter_weights(source))
        model.initialize_buffers(device)
        self.model = model.eval()
        self.kv_cache: KVCache | None = None

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        spec = self.model.spec
        self.kv_cache = KVCache(spec.num_layers, num_blocks, block_size, spec.num_kv_heads, spec.head_dim,
                                self.dtype, self.device)

    @torch.inference_mode()
    def execute(self, output: SchedulerOutput) -> StepResult:
        batch = ForwardBatch.build(output, self.kv_cache.block_size, self.device)
        hidden = self.model(batch, self.kv_cache.layers)
        logits = self.model.compute_logits(hidden[batch.logits_indices])
        return StepResult(batch.sampled_request_ids, logits)
