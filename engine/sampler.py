"""Batched sampling: one pass over the step's logits with each request's own parameters.

Greedy rows take the argmax. Random rows draw with the exponential race
(``argmax(p / E)`` with ``E ~ Exp(1)`` is a draw from ``p``), so a seeded request only needs
its own generator to fill its own row of noise: its tokens are the same alone or in any batch.
"""

from __future__ import annotations

import torch

from .sampling_params import SamplingParams


class Sampler:
    def __init__(self, seed: int, device: torch.device) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
    ) -> list[int]:
        """``logits`` fp32 ``[num_seqs, vocab]``; row i is sampled with ``params[i]`` and ``generators[i]``."""
        greedy = logits.argmax(dim=-1)
        if all(p.is_greedy for p in params):
            return greedy.tolist()
        temperature = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=logits.device)
        probs = torch.softmax(logits / temperature.clamp(min=1e-6)[:, None], dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for row, generator in enumerate(generators):
            if generator is not None:
                noise[row].exponential_(generator=generator)
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(temperature == 0, greedy, sampled).tolist()
