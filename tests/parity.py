"""Parity against Hugging Face transformers: greedy tokens, tolerating only true near-ties, and tokenizers."""

from __future__ import annotations

from dataclasses import dataclass

import inspect

import torch

# A first divergence is accepted only if, under the reference's own logits, the two tokens'
# log-probabilities differ by less than this (fp32 kernels differ by ~1e-5 in the logits).
NEAR_TIE_NATS = 2e-3


@dataclass
class Reference:
    token_ids: list[int]
    logprobs: list[torch.Tensor]  # the reference's log-softmax before each generated token


@torch.no_grad()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> Reference:
    """Greedy decoding with transformers' own KV cache, ignoring EOS, keeping every step's log-probs."""
    # transformers 5 renamed past_key_values to cache; accept either.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(torch.tensor([prompt_ids]), use_cache=True)
    tokens, logprobs = [], []
    for _ in range(max_new_tokens):
        step_logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        token = int(step_logprobs.argmax())
        tokens.append(token)
        logprobs.append(step_logprobs)
        out = model(torch.tensor([[token]]), use_cache=True, **{cache_arg: getattr(out, cache_arg)})
    return Reference(tokens, logprobs)


def assert_greedy_match(ours: list[int], ref: Reference, label: str = "") -> bool:
    """Equal ids, or a first divergence at a near-tie of the reference (comparison stops there).

    Returns True when the sequences are identical.
    """
    for step, (mine, theirs) in enumerate(zip(ours, ref.token_ids)):
        if mine == theirs:
            continue
        gap = float(ref.logprobs[step][theirs] - ref.logprobs[step][mine])
        assert gap < NEAR_TIE_NATS, (
            f"{label}: token {step} is {mine}, transformers gives {theirs} with a log-prob gap of "
            f"{gap:.4f} nats (not a near-tie)"
        )
        return False
    assert len(ours) == len(ref.token_ids), f"{label}: {len(ours)} tokens, expected {len(ref.token_ids)}"
    return True


def assert_same_tokenizer(mine, reference, texts: list[str]) -> None:
    """Our tokenizer against transformers' on ``texts``: ids with and without special tokens, decoded text
    with and without them, every vocabulary piece, the special tokens and the chat template."""
    for text in texts:
        for add_special_tokens in (True, False):
            assert mine.encode(text, add_special_tokens) == reference.encode(text, add_special_tokens=add_special_tokens), text
        ids = reference.encode(text)
        for skip in (True, False):
            assert mine.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip), text
    vocab = list(range(len(reference)))
    assert len(mine) == len(reference) and mine.convert_ids_to_tokens(vocab) == reference.convert_ids_to_tokens(vocab)
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert (getattr(mine, name), getattr(mine, f"{name}_id")) == (getattr(reference, name),
                                                                     getattr(reference, f"{name}_id")), name
    assert mine.chat_template == reference.chat_template
