"""The batched sampler against direct computations: distributions, filters, penalties, seeds."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import SamplingParams
from engine.sampling.sampler import Sampler, SamplingRow, apply_processors

DRAWS = 40_000


def row(params: SamplingParams, outputs=(), prompt=(), generator=None, eos=None) -> SamplingRow:
    return SamplingRow(params, generator, list(prompt), list(outputs), eos)


def expected_probs(logits: list[float], p: SamplingParams) -> list[float]:
    """The target distribution, written out directly: temperature, min_p, top_k, top_p, renormalise."""
    scaled = [x / p.temperature for x in logits]
    top = max(scaled)
    weights = [math.exp(x - top) for x in scaled]
    total = sum(weights)
    probs = [w / total for w in weights]
    keep = [prob >= p.min_p * max(probs) for prob in probs]
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    order = [i for i in order if keep[i]]
    if p.top_k > 0:
        order = order[: p.top_k]
    mass = sum(probs[i] for i in order)
    kept, running = [], 0.0
    for i in order:  # smallest prefix whose (renormalised) mass reaches top_p
        if running >= p.top_p - 1e-12:
            break
        kept.append(i)
        running += probs[i] / mass
    total = sum(probs[i] for i in kept)
    return [probs[i] / total if i in kept else 0.0 for i in range(len(probs))]


def chi_square_p_value(counts: list[int], probs: list[float]) -> float:
    support = [i for i, p in enumerate(probs) if p > 0]
    stat = sum((counts[i] - DRAWS * probs[i]) ** 2 / (DRAWS * probs[i]) for i in support)
    df = len(support) - 1
    if df == 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)))


LOGITS = [2.0, 1.5, 1.2, 0.9, 0.5, 0.3, 0.0, -0.4, -1.0, -2.0]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.6),
    SamplingParams(temperature=1.3, top_k=3),
    SamplingParams(temperature=1.0, top_p=0.7),
    SamplingParams(temperature=0.8, min_p=0.2),
    SamplingParams(temperature=1.0, top_k=5, top_p=0.8),
    SamplingParams(temperature=1.5, top_k=6, top_p=0.9, min_p=0.1),
])
def test_sampled_frequencies_match_the_filtered_softmax(params):
    sampler = Sampler(seed=1234, device=torch.device("cpu"))
    logits = torch.tensor([LOGITS] * DRAWS)
    tokens = sampler(logits, [row(params)] * DRAWS).token_ids
    counts = torch.bincount(torch.tensor(tokens), minlength=len(LOGITS)).tolist()
    probs = expected_probs(LOGITS, params)
    assert all(c == 0 for c, p in zip(counts, probs) if p == 0), f"a filtered token was drawn: {counts}"
    assert chi_square_p_value(counts, probs) > 1e-3, (counts, probs)


filter_params = st.builds(
    SamplingParams,
    temperature=st.floats(0.05, 3.0),
    top_k=st.sampled_from([-1, 1, 2, 5]),
    top_p=st.floats(0.05, 1.0),
    min_p=st.floats(0.0, 0.9),
)


# Distinct logits on a 0.01 grid: no exact ties at a top_k boundary.
distinct_logits = st.lists(st.integers(-500, 500), min_size=2, max_size=30, unique=True).map(lambda xs: [x / 100 for x in xs])


@settings(max_examples=50, deadline=None)
@given(logits=distinct_logits, params=filter_params, seed=st.integers(0, 1000))
def test_filtered_tokens_are_never_drawn(logits, params, seed):
    # A token whose cumulative mass sits within float rounding of top_p (or min_p) may go either
    # way; the oracle with slightly looser thresholds says which tokens may ever be drawn.
    loose = SamplingParams(temperature=params.temperature, top_k=params.top_k,
                           top_p=min(1.0, params.top_p + 1e-4), min_p=max(0.0, params.min_p - 1e-4))
    probs = expected_probs(logits, loose)
    rows = 200
    tokens = Sampler(seed, torch.device("cpu"))(torch.tensor([logits] * rows), [row(params)] * rows).token_ids
    assert all(probs[t] > 0 for t in tokens)


@settings(max_examples=50, deadline=None)
@given(logits=distinct_logits, temperature=st.floats(0.1, 3.0))
def test_top_k_1_and_temperature_0_are_argmax(logits, temperature):
    argmax = max(range(len(logits)), key=lambda i: logits[i])
    sampler = Sampler(0, torch.device("cpu"))
    batch = torch.tensor([logits] * 2)
    out = sampler(batch, [row(SamplingParams(temperature=temperature, top_k=1)), row(SamplingParams(temperature=0.0))])
    assert out.token_ids == [argmax, argmax]


def test_seeded_rows_are_independent_of_the_batch():
    logits = torch.randn(1, 100)
    seeded = SamplingParams(temperature=1.0, seed=7)

    def draw(batch_rows, position):
        generator = torch.Generator().manual_seed(7)
        rows = [row(SamplingParams(temperature=1.0)) for _ in range(batch_rows)]
        rows.insert(position, row(seeded, generator=generator))
        tokens = []
        sampler = Sampler(99, torch.device("cpu"))
        for _ in range(20):
            tokens.append(sampler(logits.repeat(len(rows), 1), rows).token_ids[position])
        return tokens

    assert draw(0, 0) == draw(5, 2) == draw(9, 9)


def test_penalties_and_bias_match_a_direct_computation():
    vocab = 12
    torch.manual_seed(0)
    logits = torch.randn(2, vocab) * 3
    prompt, outputs = [1, 2, 2, 3], [3, 4, 4, 4, 5]
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.7, logit_bias={7: 2.5, 3: -1.0})
    plain = SamplingParams()
    got = apply_processors(logits.clone(), [row(params, outputs, prompt), row(plain, outputs, prompt)])

    want = logits[0].clone()
    want[7] += 2.5
    want[3] -= 1.0
    for token in range(vocab):
        if token in prompt or token in outputs:  # repetition: divide positive logits, multiply negative
            want[token] = want[token] / 1.7 if want[token] > 0 else want[token] * 1.7
        count = outputs.count(token)
        want[token] -= 0.3 * count + 0.5 * (count > 0)
    torch.testing.assert_close(got[0], want)
    torch.testing.assert_close(got[1], logits[1])  # a row without processors is untouched


def test_min_tokens_bans_eos_and_stop_ids_until_reached():
    logits = torch.zeros(2, 6)
    params = SamplingParams(min_tokens=3, stop_token_ids=[4])
    got = apply_processors(logits.clone(), [row(params, outputs=[1, 1], eos=5), row(params, outputs=[1, 1, 1], eos=5)])
    assert got[0, 4] == got[0, 5] == float("-inf") and torch.isfinite(got[0, :4]).all()
    assert torch.isfinite(got[1]).all()


def test_logprobs_are_the_raw_log_softmax_with_ranks():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    out = Sampler(0, torch.device("cpu"))(logits, [row(SamplingParams(temperature=0.0, logprobs=2, logit_bias={0: 50.0}))])
    raw = torch.log_softmax(logits, dim=-1)[0]
    assert out.token_ids == [0]  # the bias picks token 0 ...
    assert out.logprobs[0] == pytest.approx(float(raw[0]))  # ... but its logprob is the model's own
    assert out.ranks == [3]
    assert out.top_ids[0].tolist() == [1, 2]
