"""Llama-family Q4_K_M GGUFs to benchmark k-quants on, made here: no such file ships on PyPI.

``--source default``: the default model requantized by llama.cpp's own ``llama-quantize`` (real
weights and text; its rows of 576 are not multiples of the 256-element k-quant super-block, so most
tensors fall back to Q5_0/Q8_0 and only the MLP's down projections are Q4_K/Q6_K).
``--source random``: a random-weight Llama of ~320M parameters whose sizes divide into super-blocks
(hidden 1024, MLP 2816, 24 layers, 16 query and 4 KV heads) with the default model's tokenizer,
written as F16 with the ``gguf`` package and quantized by ``llama-quantize``: Q4_K and Q6_K
throughout, as users' files of 0.5-8B models hold (its random text trips llama-server's output
parser now and then, so it serves the byte counts, not the server comparison).
Every quantized type in the result is then read with our decoders and compared with gguf-py's
dequantization (llama.cpp's reference formulas); the report is printed as JSON.

    python -m benchmarks.kquant_gguf --source random --llama-quantize /path/to/llama-quantize
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import gguf
import numpy as np
import torch

from engine.model.loader.gguf import _LOW_BIT_DECODERS
from engine.model.loader.resolve import cache_dir, default_gguf_file

SIZES = {"block_count": 24, "embedding_length": 1024, "feed_forward_length": 2816, "attention.head_count": 16,
         "attention.head_count_kv": 4, "rope.dimension_count": 64, "context_length": 4096}
NAME = "llama-320m-random"


def write_f16(path: Path, seed: int = 0) -> None:
    """The model as F16 (norms F32), with the default model's tokenizer and chat template."""
    source = gguf.GGUFReader(default_gguf_file())
    writer = gguf.GGUFWriter(str(path), "llama")
    skip = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version", "llama.")
    for key, field in source.fields.items():
        if not key.startswith(skip):
            writer.add_key_value(key, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    for key, value in SIZES.items():
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.rope.freq_base", 100000.0)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    vocab = len(source.fields["tokenizer.ggml.tokens"].contents())
    writer.add_uint32("llama.vocab_size", vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    hidden, ffn = SIZES["embedding_length"], SIZES["feed_forward_length"]
    kv = SIZES["attention.head_count_kv"] * hidden // SIZES["attention.head_count"]
    generator = np.random.default_rng(seed)

    def add(name: str, shape: tuple[int, ...], std: float | None = 0.02) -> None:
        if std is None:  # a norm's weight
            writer.add_tensor(name, np.ones(shape, dtype=np.float32))
        else:
            writer.add_tensor(name, (generator.standard_normal(shape, dtype=np.float32) * std).astype(np.float16))

    add("token_embd.weight", (vocab, hidden))
    add("output_norm.weight", (hidden,), None)
    for layer in range(SIZES["block_count"]):
        prefix = f"blk.{layer}"
        add(f"{prefix}.attn_norm.weight", (hidden,), None)
        add(f"{prefix}.attn_q.weight", (hidden, hidden))
        add(f"{prefix}.attn_k.weight", (kv, hidden))
        add(f"{prefix}.attn_v.weight", (kv, hidden))
        add(f"{prefix}.attn_output.weight", (hidden, hidden))
        add(f"{prefix}.ffn_norm.weight", (hidden,), None)
        add(f"{prefix}.ffn_gate.weight", (ffn, hidden))
        add(f"{prefix}.ffn_up.weight", (ffn, hidden))
        add(f"{prefix}.ffn_down.weight", (hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def check_decoders(path: Path) -> dict[str, dict]:
    """Per quantized type in the file: its tensors and bytes, and the largest difference between our
    decoder's weights and gguf-py's dequantization over the first such tensor."""
    report: dict[str, dict] = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        kind = tensor.tensor_type.name
        entry = report.setdefault(kind, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += int(tensor.n_bytes)
        decode = _LOW_BIT_DECODERS.get(kind)
        if decode is None or "max_abs_diff" in entry or len(tensor.shape) != 2:
            continue
        raw = np.array(tensor.data)
        ours = decode(torch.from_numpy(raw.copy())).dequantize()
        reference = torch.from_numpy(gguf.quants.dequantize(raw, tensor.tensor_type).astype(np.float32))
        entry["max_abs_diff"] = float((ours - reference.reshape(ours.shape)).abs().max())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_quantize = Path(os.environ.get("LLAMA_SERVER", "llama-server")).with_name("llama-quantize")
    parser.add_argument("--llama-quantize", type=Path, default=default_quantize)
    parser.add_argument("--source", choices=("default", "random"), default="default")
    parser.add_argument("--kind", default="Q4_K_M")
    args = parser.parse_args()
    folder = cache_dir() / "gguf"
    folder.mkdir(parents=True, exist_ok=True)
    name = NAME if args.source == "random" else default_gguf_file().name.split(".")[0]
    target = folder / f"{name}-{args.kind.lower()}.gguf"
    if not target.is_file():
        source = folder / f"{NAME}-f16.gguf" if args.source == "random" else default_gguf_file()
        if args.source == "random":
            write_f16(source)
        command = [str(args.llama_quantize), "--allow-requantize", str(source), str(target), args.kind]
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        if run.returncode:
            raise RuntimeError(f"llama-quantize failed: {run.stderr[-2000:]}")
        if args.source == "random":
            source.unlink()
    print(json.dumps({"file": str(target), "types": check_decoders(target)}, indent=1))


if __name__ == "__main__":
    main()
