"""``SamplingParams.output_kind``: deltas add up to the cumulative outputs, FINAL_ONLY sends one, and a
streamed request's outputs grow linearly with its length (the engine never resends what it sent)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from engine import LLMEngine, RequestOutputKind, SamplingParams
from engine.config import EngineConfig


def _outputs(engine: LLMEngine, prompt: str, params: SamplingParams) -> list:
    engine.add_request("r", prompt, params)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    return outputs


@pytest.fixture(scope="module")
def engine(tiny_model_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("long-context")
    shutil.copytree(tiny_model_factory("llama", 0.02), folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8192}))
    return LLMEngine(EngineConfig.from_kwargs(str(folder), dtype="float32", max_model_len=4200, enforce_eager=True))


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, logprobs=2),
    SamplingParams(n=2, max_tokens=40, temperature=1.0, seed=3, stop=[" the", "."], logprobs=1),
], ids=["greedy-logprobs", "n2-stop-strings"])
def test_deltas_add_up_to_the_cumulative_output(engine, params):
    cumulative = _outputs(engine, "Once upon a time", params)
    deltas = _outputs(engine, "Once upon a time", replace(params, output_kind=RequestOutputKind.DELTA))
    final = cumulative[-1]
    assert final.finished and deltas[-1].finished
    for choice in final.outputs:
        parts = [c for out in deltas for c in out.outputs if c.index == choice.index]
        assert "".join(c.text for c in parts) == choice.text
        assert [t for c in parts for t in c.token_ids] == choice.token_ids
        assert [p for c in parts for p in c.logprobs] == choice.logprobs
        assert [c.finish_reason for c in parts if c.finished] == [choice.finish_reason]  # sent once
    assert sum(1 for out in deltas if out.prompt_logprobs is not None) <= 1


def test_final_only_sends_one_output_equal_to_the_cumulative_last(engine):
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    (only,) = _outputs(engine, "Hello", replace(params, output_kind=RequestOutputKind.FINAL_ONLY))
    last = _outputs(engine, "Hello", params)[-1]
    assert only.finished and only.outputs == last.outputs
    assert only.metrics.num_generated_tokens == 30


def test_a_streamed_request_hands_over_bytes_linear_in_its_length(engine):
    """What the engine hands to a server per request: text, token ids and outputs, for 512 and 4,096 tokens.
    Cumulative outputs would grow 64x for 8x the tokens; deltas grow 8x."""
    def handed_over(num_tokens: int) -> int:
        params = SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True,
                                output_kind=RequestOutputKind.DELTA)
        outputs = _outputs(engine, "Hello", params)
        assert outputs[-1].metrics.num_generated_tokens == num_tokens
        return sum(len(c.text.encode()) + 8 * len(c.token_ids) for out in outputs for c in out.outputs)

    short, long = handed_over(512), handed_over(4096)
    assert long / short < 8 * 1.25, (short, long)
