"""Batched sampling: one pass over the step's logits applies every row's own parameters.

Order, as in vLLM: logit_bias and the min_tokens mask, then penalties (repetition over prompt
and output tokens, frequency and presence over output tokens, OpenAI's definition); greedy
rows take the argmax of that; random rows are divided by their temperature, then min_p, top_k
and top_p filter them, and a token is drawn with the exponential race (``argmax(p / E)``,
``E ~ Exp(1)``, is a draw from ``p``). A seeded row fills its noise from its own generator, so
its tokens do not depend on the batch. A row with a grammar (structured outputs) has the tokens it
forbids masked after the processors. Log-probabilities returned are the model's raw ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .grammar import apply_bitmask, fill_bitmask
from .sampling_params import SamplingParams


@dataclass
class SamplingRow:
    """What one row of the step's logits is sampled with."""

    params: SamplingParams
    generator: torch.Generator | None
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    eos_token_id: int | None
    matcher: Any = None  # an llguidance matcher: only the tokens its grammar allows next
    close_with: torch.Tensor | None = None  # a packed mask: of the grammar's tokens, prefer these (if any)

    @property
    def needs_processing(self) -> bool:
        """Whether logit_bias, the min_tokens ban or a penalty changes this row's logits."""
        params = self.params
        return bool(params.logit_bias) or len(self.output_token_ids) < params.min_tokens or params.uses_penalties


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float] | None  # raw log-probability of each chosen token; None unless a row asked
    ranks: list[int] | None  # 1 = the most likely token; None unless a row asked for logprobs
    top_ids: torch.Tensor | None  # [rows, max requested logprobs], None if no row asked
    top_logprobs: torch.Tensor | None


class Sampler:
    def __init__(self, seed: int, device: torch.device) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        """``logits`` fp32 ``[len(rows), vocab]``.

        Full-vocabulary passes cost ~1 ms each at 64 rows, so the common case (greedy, no
        processors, no logprobs asked) makes only one: argmax.
        """
        processed = apply_processors(logits.clone(), rows) if any(row.needs_processing for row in rows) else logits
        constrained = [index for index, row in enumerate(rows) if row.matcher is not None]
        if constrained:  # structured outputs: every token the row's grammar forbids goes to -inf
            processed = processed.clone() if processed is logits else processed
            bitmask = fill_bitmask([rows[index].matcher for index in constrained], logits.shape[1])
            for position, index in enumerate(constrained):
                if rows[index].close_with is not None:
                    narrowed = bitmask[position] & rows[index].close_with
                    if narrowed.any():
                        bitmask[position] = narrowed
            apply_bitmask(processed, bitmask, constrained)
        tokens = processed.argmax(dim=-1)
        if not all(row.params.is_greedy for row in rows):
            temperature = torch.tensor([row.params.temperature for row in rows], dtype=logits.dtype, device=logits.device)
            tokens = torch.where(temperature == 0, tokens, self._draw(processed, temperature, rows))
        num_top = max((row.params.logprobs or 0 for row in rows), default=0)
        chosen = ranks = top_logprobs = top_ids = None
        if any(row.params.logprobs is not None for row in rows):
            # log_softmax reduces each row alone (logsumexp splits a lone row's sum across threads: other bits)
            log_probs = torch.log_softmax(logits, dim=-1)
            chosen_logits = logits.gather(1, tokens[:, None])
            chosen = log_probs.gather(1, tokens[:, None])[:, 0].tolist()
            ranks = ((logits > chosen_logits).sum(dim=-1) + 1).tolist()
            if num_top:
                top_logprobs, top_ids = log_probs.topk(num_top, dim=-1)
        return SamplerOutput(tokens.tolist(), chosen, ranks, top_ids, top_logprobs)

    def _draw(self, logits: torch.Tensor, temperature: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        probs = torch.softmax(filter_logits(logits / temperature.clamp(min=1e-5)[:, None], rows), dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for index, row in enumerate(rows):
            if row.generator is not None:
                noise[index].exponential_(generator=row.generator)
        # Exp(1) can return exactly 0; 0 / 0 would be NaN, which argmax would pick.
        noise.clamp_(min=torch.finfo(noise.dtype).tiny)
        return (probs / noise).argmax(dim=-1)


def apply_processors(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """logit_bias, the min_tokens ban on stop tokens, and the three penalties, in place."""
    bias_rows, bias_cols, bias_values = [], [], []
    for index, row in enumerate(rows):
        for token, bias in (row.params.logit_bias or {}).items():
            bias_rows.append(index)
            bias_cols.append(token)
            bias_values.append(bias)
        if len(row.output_token_ids) < row.params.min_tokens:
            banned = list(row.params.stop_token_ids)
            if row.eos_token_id is not None and not row.params.ignore_eos:
                banned.append(row.eos_token_id)
            logits[index, banned] = float("-inf")
    if bias_rows:
        device = logits.device
        logits.index_put_(
            (torch.tensor(bias_rows, device=device), torch.tensor(bias_cols, device=device)),
            torch.tensor(bias_values, dtype=logits.dtype, device=device), accumulate=True,
        )
    if any(row.params.uses_penalties for row in rows):
        apply_penalties(logits, rows)
    return logits


def _scatter_counts(rows: list[list[int]], shape: torch.Size, device) -> torch.Tensor:
    """``counts[i, t]`` = how often token t occurs in ``rows[i]``."""
    counts = torch.zeros(shape, device=device)
    row_index = [i for i, ids in enumerate(rows) for _ in ids]
    if row_index:
        flat = [t for ids in rows for t in ids]
        index = (torch.tensor(row_index, device=device), torch.tensor(flat, device=device))
        counts.index_put_(index, torch.ones(len(flat), device=device), accumulate=True)
    return counts


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    def column(name: str) -> torch.Tensor:
        return torch.tensor([getattr(row.params, name) for row in rows], dtype=logits.dtype, device=logits.device)[:, None]

    output_counts = _scatter_counts([row.output_token_ids for row in rows], logits.shape, logits.device)
    seen = output_counts > 0
    repetition = column("repetition_penalty")
    if (repetition != 1.0).any():
        seen_anywhere = seen | (_scatter_counts([row.prompt_token_ids for row in rows], logits.shape, logits.device) > 0)
        penalised = torch.where(logits > 0, logits / repetition, logits * repetition)
        logits.copy_(torch.where(seen_anywhere, penalised, logits))
    logits -= column("frequency_penalty") * output_counts + column("presence_penalty") * seen


def filter_logits(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """min_p (relative to the top probability), then top_k, then top_p; filtered entries become -inf."""
    device = logits.device
    min_p = torch.tensor([row.params.min_p for row in rows], dtype=logits.dtype, device=device)
    vocab = logits.shape[1]
    top_k = torch.tensor([min(row.params.top_k, vocab) if row.params.top_k > 0 else vocab for row in rows], device=device)
    top_p = torch.tensor([row.params.top_p for row in rows], dtype=logits.dtype, device=device)
    if (min_p > 0).any():
        probs = torch.softmax(logits, dim=-1)
        threshold = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    if (top_k < logits.shape[1]).any() or (top_p < 1.0).any():
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(logits.shape[1], device=device)[None, :]
        sorted_logits = sorted_logits.masked_fill(ranks >= top_k[:, None], float("-inf"))
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        above = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_logits = sorted_logits.masked_fill(above >= top_p[:, None], float("-inf"))
        logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)
    return logits
