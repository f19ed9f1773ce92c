"""The token embedding, sharded by vocabulary rows under tensor parallelism."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.layers.linear import LinearShards
from engine.model.parallel import TensorParallel
from engine.model.quant.lowbit import LowBitGroups


class VocabEmbedding(nn.Module):
    """Each rank holds a range of the vocabulary's rows, looks up the ids in it (zeros for the others)
    and the ranks' rows are summed. ``scale``: Gemma multiplies the embeddings by sqrt(hidden), in
    the embedding's dtype as transformers does."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel, scale: float | None = None) -> None:
        super().__init__()
        self.tp, self.rows, self.scale = tp, tp.vocab(vocab_size), scale
        self.shards = LinearShards.column(hidden_size, (vocab_size,), (self.rows,))  # the lm_head's rows too
        self.weight = nn.Parameter(torch.empty(self.rows.size, hidden_size), requires_grad=False)

    def load_checkpoint(self, tensor: torch.Tensor | LowBitGroups) -> None:
        """The checkpoint's ``[vocab, hidden]`` table (dequantized), cut to this rank's rows."""
        if not isinstance(tensor, torch.Tensor):
            tensor = tensor.dequantize()
        self.weight.data.copy_(self.shards.cut(tensor, 0).to(self.weight.dtype))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.tp.enabled:
            hidden = F.embedding(input_ids, self.weight)
        else:
            local = input_ids - self.rows.start
            outside = (local < 0) | (local >= self.rows.size)
            hidden = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill(outside[:, None], 0.0)
            hidden = self.tp.all_reduce(hidden)
        if self.scale is not None:
            hidden = hidden * torch.tensor(self.scale, dtype=torch.float32).to(hidden.dtype)
        return hidden
