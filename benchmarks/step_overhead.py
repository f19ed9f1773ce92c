"""Per-step overhead: a decode step's wall time minus the model's own forward (and logits), at
several batch sizes. What is left is scheduling, batch building, sampling, detokenizing and
output bookkeeping: the Python the engine adds around the model.

    python -m benchmarks.step_overhead --batch-sizes 1 16 64 --out benchmarks/results/step_overhead.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from engine import LLM, SamplingParams

from .common import median, run_info, synthetic_prompts


class ModelTimer:
    """Adds up the seconds spent in the model (forward, compiled or not, and logits) of one engine."""

    def __init__(self, runner) -> None:
        self.seconds = 0.0
        runner.run_model = self._timed(runner.run_model)
        runner.model.compute_logits = self._timed(runner.model.compute_logits)

    def _timed(self, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
        return wrapper


def measure(llm: LLM, timer: ModelTimer, batch_size: int, input_len: int, steps: int) -> dict:
    engine = llm.engine
    params = SamplingParams(max_tokens=steps + 8, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(synthetic_prompts(batch_size, input_len, engine.vocab_size, seed=batch_size)):
        engine.add_request(f"b{batch_size}-{i}", {"prompt_token_ids": prompt}, params)
    while engine.scheduler.num_waiting or any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.running):
        engine.step()  # prefill until every request decodes
    engine.step()
    totals, models = [], []
    for _ in range(steps):
        timer.seconds = 0.0
        started = time.perf_counter()
        outputs = engine.step()
        totals.append(time.perf_counter() - started)
        models.append(timer.seconds)
        assert len(outputs) == batch_size
    while engine.has_unfinished_requests():
        engine.step()
    overheads = [t - m for t, m in zip(totals, models)]
    return {"batch_size": batch_size, "steps": steps, "step_ms_p50": 1e3 * median(totals),
            "model_ms_p50": 1e3 * median(models), "overhead_ms_p50": 1e3 * median(overheads),
            "overhead_share": median(overheads) / median(totals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default=None, help="'none' reads the GGUF dequantized")
    parser.add_argument("--enforce-eager", action="store_true", help="no compiled decode step")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_overhead.json"))
    args = parser.parse_args()
    llm = LLM(args.model, dtype=args.dtype, quantization=args.quantization,
              enforce_eager=args.enforce_eager, max_model_len=args.input_len + args.steps + 16,
              max_num_seqs=max(args.batch_sizes))
    timer = ModelTimer(llm.engine.runner)
    results = {**run_info(), "model": llm.engine.model_name, "dtype": str(llm.engine.runtime.dtype),
               "quantization": args.quantization, "enforce_eager": args.enforce_eager,
               "runs": [measure(llm, timer, b, args.input_len, args.steps) for b in args.batch_sizes]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"{'batch':>5s} {'step ms':>8s} {'model ms':>9s} {'overhead ms':>12s} {'share':>6s}")
    for run in results["runs"]:
        print(f"{run['batch_size']:5d} {run['step_ms_p50']:8.2f} {run['model_ms_p50']:9.2f} "
              f"{run['overhead_ms_p50']:12.2f} {run['overhead_share']:6.1%}")


if __name__ == "__main__":
    main()
