"""Do constrained outputs validate? The default model under generated JSON schemas, through ``engine serve``
and the official openai client, streamed and not, at temperature 0.8.

For each of ``--schemas`` schemas (benchmarks/json_schemas.py: nested objects, arrays with min/max
items, enums, string patterns, bounded integers, optional fields, one in five recursive through
``$ref``) it asks a chat completion with ``response_format: json_schema`` (strict) twice with the same
seed, once streamed, and checks each output with ``json.loads`` and ``jsonschema``. (The two texts
may differ: they run in different batches, and bf16 logits change in the last bits with the batch.)
Outputs that ran out of ``max_tokens`` are counted apart (a recursive
schema lets a model nest as deep as it likes; JSON outputs close what they have open near
``max_tokens`` so that this does not cut them).

    python -m benchmarks.schema_validity --out benchmarks/results/schema_validity.json
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import free_port, run_info
from .json_schemas import make_schemas
from .vs_llama_cpp import engine_command, running


def check(client, model: str, index: int, schema: dict, max_tokens: int) -> dict:
    import jsonschema

    kwargs = dict(model=model, temperature=0.8, seed=index, max_tokens=max_tokens,
                  messages=[{"role": "user", "content": "Reply with one JSON record."}],
                  response_format={"type": "json_schema",
                                   "json_schema": {"name": f"schema_{index}", "schema": schema, "strict": True}})
    reply = client.chat.completions.create(**kwargs).choices[0]
    streamed, streamed_reason = "", None
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            streamed += choice.delta.content or ""
            streamed_reason = choice.finish_reason or streamed_reason
    result = {"schema": index, "recursive": "$defs" in schema}
    for name, text, reason in (("plain", reply.message.content, reply.finish_reason),
                               ("streamed", streamed, streamed_reason)):
        try:
            jsonschema.validate(json.loads(text), schema)
            valid = True
        except (ValueError, jsonschema.ValidationError):
            valid = False
        result[name] = {"finish_reason": reason, "valid": valid, "chars": len(text)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--schemas", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--enforce-eager", action="store_true", help="skip compiling the decode step (smoke runs)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/schema_validity.json"))
    args = parser.parse_args()

    import openai

    port = free_port()
    extra = ["--max-model-len", str(args.max_model_len), *(["--enforce-eager"] if args.enforce_eager else [])]
    command = engine_command(args.model, port, args.concurrency, extra)
    schemas = make_schemas(args.schemas)
    with tempfile.TemporaryDirectory() as tmp, running(command, port, Path(tmp) / "server.log", 900) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=3600)
        model = client.models.list().data[0].id
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(lambda item: check(client, model, item[0], item[1], args.max_tokens),
                                    enumerate(schemas)))

    summary = {}
    for name in ("plain", "streamed"):
        finished = [r for r in results if r[name]["finish_reason"] != "length"]
        summary[name] = {
            "valid": sum(r[name]["valid"] for r in results),
            "finish_reasons": dict(collections.Counter(r[name]["finish_reason"] for r in results)),
            "valid_of_finished": f"{sum(r[name]['valid'] for r in finished)}/{len(finished)}",
            "ran_out_of_tokens": [r["schema"] for r in results if r[name]["finish_reason"] == "length"],
        }
    out = {**run_info("python -m benchmarks.schema_validity"), "schemas": args.schemas, "temperature": 0.8,
           "max_tokens": args.max_tokens, "summary": summary, "results": results}
    for name in ("plain", "streamed"):
        print(f"{name}: {summary[name]['valid']}/{args.schemas} valid; of those that finished: "
              f"{summary[name]['valid_of_finished']}; out of tokens: {summary[name]['ran_out_of_tokens']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
