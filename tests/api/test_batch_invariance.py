"""Same request, same answer: ``engine serve --batch-invariant`` on the default model, in its default dtype,
with prefix caching on (issue 30).

Every comparison is of the text and of each token's log-probability (the float the logits give), so a
difference in a token's logits shows even where it does not change the token. The prompts are given as
token ids of 100 to 300 tokens; a repeat of a prompt finds its full blocks in the prefix cache and
prefills only its tail. Without ``--batch-invariant`` each of these tests fails on this machine
(benchmarks/NOTES.md §18 has the counts).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest
from conftest import start_server, stop_server

TEXT = (Path(__file__).parents[2] / "benchmarks" / "data" / "heldout.txt").read_text().split()
PROMPT_LENGTHS = [100, 128, 157, 181, 210, 236, 270, 300]
OUTPUT_TOKENS = 128
Answer = tuple[str, list[float]]


@pytest.fixture(scope="module")
def server(default_model, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("invariant") / "server.log"
    srv = start_server(default_model, log_path, "--served-model-name", "smollm2", "--max-model-len", "512",
                       "--max-num-seqs", "64", "--batch-invariant")
    yield srv
    stop_server(srv)


def token_prompts(server, lengths: list[int], offset: int) -> list[list[int]]:
    """Prompts of exactly ``lengths`` tokens, cut from different places of a held-out text."""
    prompts = []
    for index, length in enumerate(lengths):
        start = (offset + 41 * index) % len(TEXT)
        text = " ".join((TEXT * 3)[start : start + 2 * length])
        ids = httpx.post(f"{server.url}/tokenize", json={"prompt": text}).json()["tokens"]
        assert len(ids) >= length
        prompts.append(ids[:length])
    return prompts


@pytest.fixture(scope="module")
def prompts(server) -> list[list[int]]:
    return token_prompts(server, PROMPT_LENGTHS, offset=0)


@pytest.fixture(scope="module")
def others(server) -> list[list[int]]:
    """24 requests of other lengths, to share the steps of the prompts under test."""
    return token_prompts(server, [20 + 11 * i for i in range(24)], offset=900)


async def complete(client: openai.AsyncOpenAI, prompt: list[int], stream: bool = False, max_tokens: int = OUTPUT_TOKENS,
                   **sampling) -> Answer:
    """The completion's text and its tokens' log-probabilities."""
    args = dict(model="smollm2", prompt=prompt, max_tokens=max_tokens, logprobs=1, extra_body={"ignore_eos": True},
                **{"temperature": 0.0, **sampling})
    if not stream:
        choice = (await client.completions.create(**args)).choices[0]
        return choice.text, choice.logprobs.token_logprobs
    text, logprobs = "", []
    async for chunk in await client.completions.create(**args, stream=True):
        if chunk.choices:
            text += chunk.choices[0].text
            logprobs += chunk.choices[0].logprobs.token_logprobs if chunk.choices[0].logprobs else []
    return text, logprobs


def together(server, requests: list[dict]) -> list[Answer]:
    """All ``requests`` (``complete``'s keyword arguments) sent at once."""
    async def run():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=600) as client:
            return await asyncio.gather(*(complete(client, **request) for request in requests))
    return asyncio.run(run())


def alone(server, requests: list[dict]) -> list[Answer]:
    """Each of ``requests`` sent when nothing else runs."""
    return [together(server, [request])[0] for request in requests]


@pytest.fixture(scope="module")
def first_round(server, prompts) -> list[Answer]:
    answers = together(server, [{"prompt": p} for p in prompts])
    assert all(len(logprobs) == OUTPUT_TOKENS for _, logprobs in answers)
    return answers


def test_the_same_prompts_sent_three_times_give_the_same_answers(server, prompts, first_round):
    for _ in range(2):  # the repeats find the prompts' full blocks in the prefix cache
        assert together(server, [{"prompt": p} for p in prompts]) == first_round


def test_streamed_equals_non_streamed(server, prompts, first_round):
    assert together(server, [{"prompt": p, "stream": True} for p in prompts]) == first_round


def test_each_prompt_alone_equals_it_among_31_other_requests(server, prompts, others, first_round):
    crowd = together(server, [{"prompt": p} for p in prompts] + [{"prompt": p, "max_tokens": 40 + 5 * i}
                                                                 for i, p in enumerate(others)])
    assert crowd[: len(prompts)] == first_round
    assert alone(server, [{"prompt": p} for p in prompts]) == first_round


def test_a_seeded_sampled_request_alone_equals_it_batched(server, prompts, others):
    seeded = [{"prompt": p, "temperature": 0.8, "seed": 1234 + i, "max_tokens": 64} for i, p in enumerate(prompts[:2])]
    by_itself = alone(server, seeded)
    crowd = together(server, seeded + [{"prompt": p, "max_tokens": 30 + 3 * i}
                                       for i, p in enumerate(prompts[2:] + others)])
    assert crowd[:2] == by_itself
    assert by_itself[0] != by_itself[1]
