"""CPU kernels for the compiled decode step: a C++ paged decode attention and a traceable cache write.

``paged_attention_decode`` has the contract of ``reference.paged_attention_decode`` and reads K/V
in place through the block table (no gathered copy); inside a ``torch.compile`` graph it is one
extern call per layer. It is C++ (``csrc/``), built on first use: the compiled step needs a C++
compiler anyway (inductor builds its kernels with it), so ``torch.utils.cpp_extension`` compiles
it once per machine, for the SIMD level inductor picks here (AVX-512, AVX2 or none), into
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``). The library's name carries the
CPU's features, the torch version and a digest of the sources, so a later process loads a built
one in milliseconds without asking inductor for the SIMD level (which costs seconds of imports),
and a changed source, torch or CPU never loads a stale one.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

import torch

_SOURCES = sorted(Path(__file__).with_name("csrc").glob("*.cpp"))
# the /proc/cpuinfo flags that decide which instructions generated C++ may use
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
              "asimd", "sve")


@functools.cache
def cpu_fingerprint() -> str:
    """The machine's architecture and SIMD features: what code built for one CPU needs of another."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return "-".join([platform.machine(), *(flag for flag in _ISA_FLAGS if flag in flags)])


def library_name() -> str:
    digest = hashlib.sha256("\0".join([torch.__version__, cpu_fingerprint(), *(s.read_text() for s in _SOURCES)])
                            .encode()).hexdigest()[:16]
    return f"engine_cpu_ops_{digest}"


def _build_dir(name: str) -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(root) / name


@functools.cache
def load() -> None:
    """Load the library, building it first (once per machine); raises if there is no working compiler."""
    name = library_name()
    built = _build_dir(name) / f"{name}.so"
    if built.is_file():
        torch.ops.load_library(str(built))
    else:
        _build(name)

    @torch.library.register_fake("engine_cpu::paged_decode_attention")
    def _(q, k_cache, v_cache, block_tables, seq_lens, scale, window, softcap):
        return torch.empty_like(q)

    @torch.library.register_fake("engine_cpu::rows_matmul")
    def _(x, codes, scales, shifts, n_out):
        return x.new_empty(x.shape[0], n_out)


def _build(name: str) -> None:
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    from torch.utils import cpp_extension

    isa = pick_vec_isa()
    flags = ["-O3", "-fopenmp", *isa.build_arch_flags().split(), *(f"-D{macro}" for macro in isa.build_macro())]
    folder = _build_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name, [str(s) for s in _SOURCES], is_python_module=False, extra_cflags=flags,
                       extra_ldflags=["-fopenmp"], build_directory=str(folder))


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    plan: None = None,
    window: int = 0,
    softcap: float = 0.0,
) -> torch.Tensor:
    """q ``[num_seqs, num_heads, head_dim]`` (fp32 or bf16) -> like q; the reference's contract (``plan``
    unused). Each query row is reduced alone over exactly its ``seq_len`` positions in position order, so
    its bits depend neither on the other rows nor on padding: the batch-invariant kernel set runs every
    token through it (a prompt token is a row whose ``seq_len`` is its position + 1)."""
    return torch.ops.engine_cpu.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, window,
                                                       softcap)


def no_plan(block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int, num_heads: int,
            num_kv_heads: int) -> None:
    """``plan_decode`` of the row set: the C++ kernel derives nothing per step."""


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Like ``reference.store_kv`` for a step that writes every token (no -1 slots): decode steps.
    ``index_copy_`` traces into one fused in-place scatter (the reference's boolean mask would not)."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)
