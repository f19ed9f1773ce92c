"""What every benchmark records and shares: where it ran, synthetic prompts, percentiles, servers on
loopback (a free port, waiting until one answers); the tests start their servers with these too."""

from __future__ import annotations

import platform
import random
import shlex
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from engine import LLM, RequestOutput, SamplingParams


def run_info(command: str | None = None) -> dict:
    """The machine, the commit and the command line, stored with every result file."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
    return {
        "machine": f"{platform.machine()} {_cpu_name()}, {torch.get_num_threads()} torch threads, "
                   f"cuda={torch.cuda.get_device_name() if torch.cuda.is_available() else None}",
        "commit": commit + ("+dirty" if dirty.strip() else ""),
        "command": command or _command_line(),
        "torch": torch.__version__,
    }


def _command_line() -> str:
    """How this benchmark was started, as a user would type it again."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None else f"python {sys.argv[0]}"
    return " ".join([program, *(shlex.quote(arg) for arg in sys.argv[1:])])


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def synthetic_prompts(num_prompts: int, input_len: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """Random token ids (away from the special ids at the start of most vocabularies)."""
    rng = random.Random(seed)
    return [[rng.randrange(1000, vocab_size) for _ in range(input_len)] for _ in range(num_prompts)]


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation, as numpy's default."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed_generate(llm: LLM, prompts: list[list[int]], output_len: int) -> tuple[float, list[RequestOutput]]:
    """Seconds for ``llm.generate`` of exactly ``output_len`` greedy tokens per prompt
    (``ignore_eos``), after the same call on two prompts as a warm-up (kernel compiles, caches)."""
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    requests = [{"prompt_token_ids": prompt} for prompt in prompts]
    llm.generate(requests[:2], params, use_tqdm=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, outputs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Return once ``url`` answers 200 (llama-server answers 503 while loading); fail with the log
    if the process exits, or kill it and fail if the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling, bounded by the deadline
    process.kill()
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s:\n{log_path.read_text()[-4000:]}")
