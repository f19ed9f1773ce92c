"""What structured outputs cost a decode step: a batch of constrained requests against the same batch
unconstrained, on the default model (its compiled CPU decode step, as ``engine serve`` runs it).

Each of ``--batch`` requests has a generated JSON schema (benchmarks/json_schemas.py) under a long
``notes`` string, so all of them stay in the batch for many steps. For those steps it times the
grammar work (filling the rows' token bitmask and applying it) and the whole step; the same prompts
unconstrained (ignore_eos), over as many first steps so that contexts are as long, give the step
without any of it. Reported: medians, the mask share of the constrained step, and the constrained
step over the unconstrained one (which also counts advancing the matchers, but moves by 10-15%
between runs on this shared machine: the mask share, timed inside the step, is the steady figure).

    python -m benchmarks.mask_cost --out benchmarks/results/mask_cost.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import median, run_info
from .json_schemas import make_schemas


def long_schema(record: dict, notes: int) -> dict:
    """``record`` after a string of about ``notes`` characters (its ``$defs`` moved to the root, where its
    references point)."""
    record = dict(record)
    defs = record.pop("$defs", None)
    schema = {"type": "object", "additionalProperties": False, "required": ["notes", "record"],
              "properties": {"notes": {"type": "string", "minLength": notes, "maxLength": notes + 20}, "record": record}}
    return schema if defs is None else {"$defs": defs, **schema}


def timed_steps(engine, requests: list, rows_wanted: int, timings: dict[str, list[float]],
                max_steps: int = 10**9) -> list[dict[str, float]]:
    """Seconds of the step and of each timed part, for each of the first ``max_steps`` steps that sampled
    ``rows_wanted`` rows (the same steps of two runs have the same context lengths)."""
    for request_id, prompt, params in requests:
        engine.add_request(request_id, prompt, params)
    steps = []
    while engine.has_unfinished_requests() and len(steps) < max_steps:
        for values in timings.values():
            values.clear()
        started = time.perf_counter()
        outputs = engine.step()
        elapsed = time.perf_counter() - started
        running = engine.scheduler.num_running + sum(1 for o in outputs if o.finished)
        if running == rows_wanted and not any(o.finished for o in outputs):
            steps.append({"step": elapsed, **{name: sum(values) for name, values in timings.items()}})
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--notes", type=int, default=400, help="characters of the leading string")
    parser.add_argument("--steps", type=int, default=80, help="steps measured, all rows in the batch")
    parser.add_argument("--enforce-eager", action="store_true", help="skip compiling the decode step (smoke runs)")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mask_cost.json"))
    args = parser.parse_args()

    import engine.sampling.sampler as sampler_module
    from engine import LLM, SamplingParams, StructuredOutputsParams

    llm = LLM(args.model, max_num_seqs=args.batch, max_model_len=args.max_model_len, enforce_eager=args.enforce_eager)
    engine = llm.engine
    timings: dict[str, list[float]] = {"fill": [], "apply": []}

    def timed(fn, name: str):
        def wrapper(*a, **k):
            started = time.perf_counter()
            result = fn(*a, **k)
            timings[name].append(time.perf_counter() - started)
            return result
        return wrapper

    sampler_module.fill_bitmask = timed(sampler_module.fill_bitmask, "fill")
    sampler_module.apply_bitmask = timed(sampler_module.apply_bitmask, "apply")
    prompts = [engine.input_processor.render_chat([{"role": "user", "content": f"Record {i} as JSON, with notes."}])[1]
               for i in range(args.batch)]
    schemas = [long_schema(schema, args.notes) for schema in make_schemas(args.batch)]
    constrained = [(f"c{i}", {"prompt_token_ids": ids}, SamplingParams(
        temperature=0.8, seed=i, max_tokens=600, structured_outputs=StructuredOutputsParams(json=schema)))
        for i, (ids, schema) in enumerate(zip(prompts, schemas))]
    free = [(f"f{i}", {"prompt_token_ids": ids}, SamplingParams(temperature=0.8, seed=i, max_tokens=120, ignore_eos=True))
            for i, ids in enumerate(prompts)]

    for warm_up in (free[:2], constrained[:2]):  # compile grammars, warm caches
        timed_steps(engine, [(f"w{rid}", p, s) for rid, p, s in warm_up], 2, timings)
    with_masks = timed_steps(engine, constrained, args.batch, timings, args.steps)
    without = timed_steps(engine, free, args.batch, timings, len(with_masks))
    for request_id, _, _ in constrained + free:  # the rest is not measured
        engine.abort(request_id)

    step_constrained = median([s["step"] for s in with_masks])
    masks = median([s["fill"] + s["apply"] for s in with_masks])
    step_free = median([s["step"] for s in without])
    result = {
        **run_info("python -m benchmarks.mask_cost"),
        "batch": args.batch, "steps_measured": {"constrained": len(with_masks), "unconstrained": len(without)},
        "median_step_ms": {"constrained": 1e3 * step_constrained, "unconstrained": 1e3 * step_free},
        "median_mask_ms": 1e3 * masks,
        "median_fill_ms": 1e3 * median([s["fill"] for s in with_masks]),
        "median_apply_ms": 1e3 * median([s["apply"] for s in with_masks]),
        "mask_share_of_constrained_step": masks / step_constrained,
        "constrained_over_unconstrained_step": step_constrained / step_free,
    }
    print(f"batch {args.batch}: step {1e3 * step_free:.1f} ms unconstrained, {1e3 * step_constrained:.1f} ms "
          f"constrained ({step_constrained / step_free:.3f}x); masks {1e3 * masks:.2f} ms = "
          f"{100 * masks / step_constrained:.1f}% of the step")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
