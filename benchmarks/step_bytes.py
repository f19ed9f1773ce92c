"""Weight bytes one decode step of one sequence reads, against the GGUF file's tensor bytes.

Each linear layer counts the buffers of the low-bit kernel a one-row step runs (int4 packed codes and
bf16 scales and zeros, int8 codes and row scales) or else its dense weight; the norms count whole. The
embedding table is looked up, not read (with tied embeddings its bytes are the lm_head's, counted once).

    python -m benchmarks.step_bytes --model FILE.gguf --out benchmarks/results/step_bytes.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gguf
import numpy as np

from engine import LLM
from engine.model.layers.linear import Linear
from engine.model.loader.gguf import read_index

from .common import run_info


def step_bytes(model) -> int:
    total = 0
    for module in model.modules():
        if isinstance(module, Linear):
            kernel = module.low_bit
            tensors = list(kernel.buffers()) if kernel is not None else [module.weight]
            total += sum(t.numel() * t.element_size() for t in [*tensors, module.bias] if t is not None)
    return total + sum(p.numel() * p.element_size() for name, p in model.named_parameters() if "norm" in name)


def file_tensor_bytes(path: Path) -> int:
    total = 0
    for info in read_index(path).tensors:
        elements, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(info.ggml_type)]
        total += int(np.prod(info.shape)) // elements * size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_bytes.json"))
    args = parser.parse_args()
    llm = LLM(str(args.model), enforce_eager=True, max_model_len=512)
    read, stored = step_bytes(llm.engine.runner.model), file_tensor_bytes(args.model)
    result = {**run_info(), "model": args.model.name, "step_weight_bytes": read, "file_tensor_bytes": stored,
              "ratio": read / stored}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.model.name}: a one-sequence decode step reads {read / 1e6:.1f} MB of weights, the file holds "
          f"{stored / 1e6:.1f} MB of tensors: {read / stored:.2f}x")


if __name__ == "__main__":
    main()
