"""The GPU lease scripts must not fail for a typo: run the kernel benchmark's small grid here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_kernel_benchmark_runs_and_writes_json_and_plot(tmp_path):
    out, plot = tmp_path / "kernels.json", tmp_path / "kernels.png"
    done = subprocess.run([sys.executable, "-m", "benchmarks.kernels", "--grid", "small", "--out", str(out),
                           "--plot", str(plot)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert {e["kernel"] for e in results["kernels"]} >= {"paged_attention_decode", "paged_attention_prefill",
                                                         "store_kv", "rms_norm", "silu_and_mul", "rotary_embedding"}
    assert plot.stat().st_size > 0
    assert (ROOT / "benchmarks" / "gpu_suite.sh").read_text().count("python3 -m benchmarks.") == 2
