"""Structured outputs on the engine: every output fits its grammar, bad grammars name the field, and a
constrained request changes nothing for the unconstrained ones beside it (tiny random model, so the
grammar, not the model, is what makes outputs valid)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from benchmarks.json_schemas import make_schemas
from engine import LLM, InvalidPromptError, InvalidSamplingParam, SamplingParams, StructuredOutputsParams


@pytest.fixture(scope="module")
def llm(tiny_model_factory):
    return LLM(str(tiny_model_factory("llama", initializer_range=0.02)), max_model_len=512, max_num_seqs=32,
               enforce_eager=True)


def constrained(so: StructuredOutputsParams, **kwargs) -> SamplingParams:
    return SamplingParams(**{"temperature": 0.8, "max_tokens": 440, "seed": 3, "structured_outputs": so, **kwargs})


def test_generated_schemas_always_validate(llm):
    schemas = make_schemas(12)
    params = [constrained(StructuredOutputsParams(json=schema), n=2, seed=i) for i, schema in enumerate(schemas)]
    outputs = llm.generate(["Write a record:"] * len(schemas), params, use_tqdm=False)
    for schema, output in zip(schemas, outputs):
        for completion in output.outputs:
            assert completion.finish_reason == "stop", completion.text
            jsonschema.validate(json.loads(completion.text), schema)


def test_choice_regex_grammar_and_json_object_always_match(llm):
    cases = [
        (StructuredOutputsParams(choice=["yes", "no", "maybe not"]), lambda t: t in ("yes", "no", "maybe not")),
        (StructuredOutputsParams(regex=r"[A-Z]{2}-\d{2,3}"), lambda t: re.fullmatch(r"[A-Z]{2}-\d{2,3}", t)),
        (StructuredOutputsParams(grammar='start: "(" num ("+" num)* ")"\nnum: /[0-9]{1,2}/'),
         lambda t: re.fullmatch(r"\(\d{1,2}(\+\d{1,2})*\)", t)),
        (StructuredOutputsParams(json_object=True), lambda t: isinstance(json.loads(t), dict)),
    ]
    for so, matches in cases:
        outputs = llm.generate(["Answer:", "Go"], constrained(so, n=3, max_tokens=120), use_tqdm=False)
        for completion in (c for o in outputs for c in o.outputs):
            if completion.finish_reason == "length":  # only json_object is unbounded
                assert so.json_object, completion.text
                continue
            assert completion.finish_reason == "stop" and matches(completion.text), (so.kind, completion.text)


@pytest.mark.parametrize("so, message", [
    (StructuredOutputsParams(json={"type": "objekt"}), "json grammar cannot be compiled"),
    (StructuredOutputsParams(json="{not json"), "is not JSON"),
    (StructuredOutputsParams(regex="(("), "regex grammar cannot be compiled"),
    (StructuredOutputsParams(grammar="start: undefined_rule"), "grammar grammar cannot be compiled"),
])
def test_a_grammar_that_cannot_compile_names_the_field(llm, so, message):
    with pytest.raises(InvalidPromptError) as caught:
        llm.generate("x", constrained(so), use_tqdm=False)
    (err,) = caught.value.errors.values()
    assert isinstance(err, InvalidSamplingParam) and err.field == "structured_outputs" and message in str(err)


def test_params_take_exactly_one_constraint():
    with pytest.raises(InvalidSamplingParam, match="exactly one"):
        StructuredOutputsParams(json={"type": "object"}, regex="a")
    with pytest.raises(InvalidSamplingParam, match="exactly one"):
        StructuredOutputsParams()
    for wrong in ({"choice": 5}, {"choice": "yes"}, {"json_object": "yes"}, {"regex": 3}, {"json": 7}):
        with pytest.raises(InvalidSamplingParam, match="structured_outputs"):
            StructuredOutputsParams(**wrong)


def test_a_constrained_request_leaves_its_batch_unchanged(llm):
    prompts = [f"Story number {i}:" for i in range(16)]
    free = [SamplingParams(temperature=0.9, seed=i, max_tokens=24, ignore_eos=True) for i in range(16)]
    alone = llm.generate(prompts, free, use_tqdm=False)
    schema = make_schemas(1, first_seed=5)[0]  # the recursive one
    mixed = llm.generate(prompts + ["Record:"], free + [constrained(StructuredOutputsParams(json=schema))],
                         use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[:16]] == [o.outputs[0].token_ids for o in alone]
    jsonschema.validate(json.loads(mixed[16].outputs[0].text), schema)


def test_json_closes_what_it_opened_before_max_tokens(llm):
    """A recursive schema lets a model nest without end; near max_tokens the output closes instead, so
    a model pushed to open arrays forever still ends in valid JSON within its budget."""
    schema = {"$defs": {"list": {"type": "array", "items": {"$ref": "#/$defs/list"}}}, "$ref": "#/$defs/list"}
    tokenizer = llm.get_tokenizer()
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    opening = {token_id: 8.0 for token_id, piece in enumerate(pieces) if piece and set(piece) == {"["}}
    for max_tokens in (40, 90):
        params = [constrained(StructuredOutputsParams(json=schema), max_tokens=max_tokens, logit_bias=opening, seed=seed)
                  for seed in range(4)]
        for output in llm.generate(["Lists:"] * 4, params, use_tqdm=False):
            completion = output.outputs[0]
            assert completion.finish_reason == "stop" and len(completion.token_ids) <= max_tokens, completion.text
            jsonschema.validate(json.loads(completion.text), schema)
