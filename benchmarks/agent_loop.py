"""A coding agent's loop through /v1/responses and /v1/messages: how much of each turn the prefix cache serves.

Each turn re-sends the whole conversation, as agents do (no server-side state): the system prompt
and task, then every earlier tool call and its result. The model must call a tool each turn
(``tool_choice`` required, so even a small model's calls parse); the tool's result is a fixed
synthetic file listing of ``--result-words`` words. Per turn: prompt tokens, cached tokens (from
the API's usage), time to first streamed token and the turn's time. The loop runs against
``engine serve`` with prefix caching on and off, in the same run.

The default model's own template does not render tools, so the loop serves it with the Qwen2.5
template (tests/fixtures), which renders tools, calls and results in the ChatML tokens it shares.

    python -m benchmarks.agent_loop --out benchmarks/results/agent_loop.json --plot benchmarks/results/agent_loop.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx

from .common import median, run_info
from .serve import sse_events
from .vs_llama_cpp import engine_command, running

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = ("You are a coding agent working in a Python repository. Work in small steps: look at files with "
          "read_file and run commands with run_command, one tool call per turn, until the task is done. "
          "Keep answers short. Never guess a file's content: read it first. Prefer the test suite over "
          "reasoning about behaviour, and quote the failing lines when a command fails. ")
TASK = "The tests in tests/test_parser.py fail since the last commit. Find out why and fix it."
TOOLS = [
    ("read_file", "Read a file of the repository", {"path": {"type": "string", "maxLength": 24}}),
    ("run_command", "Run a shell command in the repository", {"command": {"type": "string", "maxLength": 32}}),
]
FIRST_DELTAS = {"response.output_text.delta", "response.function_call_arguments.delta",
                "response.reasoning_text.delta", "content_block_delta"}


def tool_result(turn: int, words: int) -> str:
    """A deterministic stand-in for a file or a command's output."""
    return " ".join(f"line{turn}_{i}" if i % 7 else "\n" for i in range(words))


def responses_body(model: str, tag: str, turns: list[tuple[dict, str]], max_tokens: int) -> dict:
    items: list[dict] = [{"role": "user", "content": TASK}]
    for call, result in turns:
        items += [{"type": "function_call", "call_id": call["id"], "name": call["name"],
                   "arguments": call["arguments"]},
                  {"type": "function_call_output", "call_id": call["id"], "output": result}]
    tools = [{"type": "function", "name": name, "description": text,
              "parameters": {"type": "object", "properties": props, "required": list(props),
                             "additionalProperties": False}} for name, text, props in TOOLS]
    return {"model": model, "instructions": tag + SYSTEM, "input": items, "tools": tools, "tool_choice": "required",
            "parallel_tool_calls": False, "max_output_tokens": max_tokens, "temperature": 0.0, "stream": True}


def messages_body(model: str, tag: str, turns: list[tuple[dict, str]], max_tokens: int) -> dict:
    messages: list[dict] = [{"role": "user", "content": TASK}]
    for call, result in turns:
        messages += [{"role": "assistant", "content": [{"type": "tool_use", "id": call["id"], "name": call["name"],
                                                        "input": json.loads(call["arguments"])}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                                   "content": result}]}]
    tools = [{"name": name, "description": text, "input_schema": {
        "type": "object", "properties": props, "required": list(props), "additionalProperties": False}}
        for name, text, props in TOOLS]
    return {"model": model, "system": tag + SYSTEM, "messages": messages, "tools": tools,
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True}, "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True}


async def one_turn(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """Stream one turn: its first-token time, its whole time, its usage and its tool call."""
    started = time.perf_counter()
    first = None
    call = {"id": "", "name": "", "arguments": ""}
    usage: dict = {}
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text}")
        async for data in sse_events(response):
            event = json.loads(data)
            kind = event["type"]
            if first is None and kind in FIRST_DELTAS:
                first = time.perf_counter() - started
            if kind == "response.output_item.done" and event["item"]["type"] == "function_call":
                item = event["item"]
                call = {"id": item["call_id"], "name": item["name"], "arguments": item["arguments"]}
            elif kind in ("response.completed", "response.incomplete"):
                usage = {"prompt_tokens": event["response"]["usage"]["input_tokens"],
                         "cached_tokens": event["response"]["usage"]["input_tokens_details"]["cached_tokens"]}
            elif kind == "content_block_start" and event["content_block"]["type"] == "tool_use":
                call.update(id=event["content_block"]["id"], name=event["content_block"]["name"])
            elif kind == "content_block_delta" and event["delta"]["type"] == "input_json_delta":
                call["arguments"] += event["delta"]["partial_json"]
            elif kind == "message_start":
                start = event["message"]["usage"]
                usage = {"prompt_tokens": start["input_tokens"] + start["cache_read_input_tokens"],
                         "cached_tokens": start["cache_read_input_tokens"]}
            elif kind == "error":
                raise RuntimeError(f"the server failed the turn: {event}")
    if not call["name"]:
        raise RuntimeError(f"turn made no tool call: {body}")
    return {**usage, "ttft_ms": 1e3 * (first or 0.0), "turn_ms": 1e3 * (time.perf_counter() - started), "call": call}


async def agent_loop(base_url: str, model: str, api: str, tag: str, turns: int, result_words: int,
                     max_tokens: int) -> list[dict]:
    make_body = responses_body if api == "responses" else messages_body
    url = f"{base_url}/v1/{api}"
    history: list[tuple[dict, str]] = []
    records = []
    async with httpx.AsyncClient(timeout=600) as client:
        for turn in range(1, turns + 1):
            record = await one_turn(client, url, make_body(model, tag, history, max_tokens))
            history.append((record.pop("call"), tool_result(turn, result_words)))
            record.update(turn=turn, cached_fraction=record["cached_tokens"] / record["prompt_tokens"])
            records.append(record)
            print(f"  {api:9s} turn {turn:2d}: {record['prompt_tokens']:5d} prompt tokens, "
                  f"{record['cached_tokens']:5d} cached ({record['cached_fraction']:.0%}), "
                  f"TTFT {record['ttft_ms']:7.1f} ms, turn {record['turn_ms']:7.1f} ms", flush=True)
    return records


def summarize(records: list[dict]) -> dict:
    later = records[1:]  # the first turn has nothing to reuse
    return {"cached_fraction_after_first_turn": sum(r["cached_tokens"] for r in later) /
            max(1, sum(r["prompt_tokens"] for r in later)),
            "ttft_ms_median_after_first_turn": median([r["ttft_ms"] for r in later]),
            "turn_ms_median_after_first_turn": median([r["turn_ms"] for r in later])}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ttft, cached) = plt.subplots(1, 2, figsize=(11, 4))
    for run in results["runs"]:
        label = f"{run['api']}, {run['server']}"
        turns = [r["turn"] for r in run["turns"]]
        ttft.plot(turns, [r["ttft_ms"] for r in run["turns"]], marker="o", label=label)
        cached.plot(turns, [r["cached_fraction"] * 100 for r in run["turns"]], marker="o", label=label)
    ttft.set(xlabel="turn", ylabel="time to first token (ms)", title="TTFT per turn")
    cached.set(xlabel="turn", ylabel="prompt tokens from the prefix cache (%)", title="prefix cache hits per turn",
               ylim=(0, 100))
    ttft.legend(fontsize=8)
    fig.suptitle(f"{results['turns']}-turn agent loop, whole conversation re-sent each turn", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model folder or .gguf file (default: the default model)")
    parser.add_argument("--chat-template", default=str(ROOT / "tests" / "fixtures" / "qwen2.5_chat_template.jinja"))
    parser.add_argument("--apis", nargs="+", default=["responses", "messages"], choices=("responses", "messages"))
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--result-words", type=int, default=120, help="words in each tool result")
    parser.add_argument("--max-tokens", type=int, default=64, help="per turn")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--engine-args", default="", help="extra flags for engine serve, one string")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/agent_loop.json"))
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "agent_loop",
                        help="the servers' logs")
    args = parser.parse_args()
    results = {**run_info(), "turns": args.turns, "result_words": args.result_words, "max_tokens": args.max_tokens,
               "chat_template": Path(args.chat_template).name, "runs": []}
    servers = [("prefix caching", []), ("no prefix caching", ["--no-enable-prefix-caching"])]
    for server, flags in servers:
        extra = ["--chat-template", args.chat_template, "--served-model-name", "agent", *flags,
                 *args.engine_args.split()]
        log = args.logs / f"{server.replace(' ', '_')}.log"
        with running(engine_command(args.model, args.port, 8, extra), args.port, log, args.startup_timeout) as url:
            for api in args.apis:
                print(f"{server}, /v1/{api}:", flush=True)
                # a tag ahead of everything keeps one loop's cached blocks from serving the next
                turns = asyncio.run(agent_loop(url, "agent", api, f"[{api}] ", args.turns, args.result_words,
                                               args.max_tokens))
                results["runs"].append({"server": server, "api": api, **summarize(turns), "turns": turns})
    by = {(run["server"], run["api"]): run for run in results["runs"]}
    results["ttft_speedup_from_caching"] = {
        api: by[("no prefix caching", api)]["ttft_ms_median_after_first_turn"] /
        by[("prefix caching", api)]["ttft_ms_median_after_first_turn"] for api in args.apis}
    print(json.dumps({key: results[key] for key in ("ttft_speedup_from_caching",)}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
