"""CPU kernels for the compiled decode step: a C++ paged decode attention and a traceable cache write.

``paged_attention_decode`` has the contract of ``reference.paged_attention_decode`` and reads K/V
in place through the block table (no gathered copy); inside a ``torch.compile`` graph it is one
extern call per layer. It is C++ (``csrc/``), built on first use: the compiled step needs a C++
compiler anyway (inductor builds its kernels with it), so ``torch.utils.cpp_extension`` compiles
it once per machine, for the SIMD level inductor picks here (AVX-512, AVX2 or none), into
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``); later processes load the
cached library in milliseconds.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

_SOURCES = sorted(Path(__file__).with_name("csrc").glob("*.cpp"))


@functools.cache
def load() -> None:
    """Build (once per machine) and load the library; raises if there is no working compiler."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    from torch.utils import cpp_extension

    isa = pick_vec_isa()
    flags = ["-O3", "-fopenmp", *isa.build_arch_flags().split(), *(f"-D{macro}" for macro in isa.build_macro())]
    cpp_extension.load(f"engine_cpu_ops_{isa}".replace(" ", "_"), [str(s) for s in _SOURCES], is_python_module=False,
                       extra_cflags=flags, extra_ldflags=["-fopenmp"])

    @torch.library.register_fake("engine_cpu::paged_decode_attention")
    def _(q, k_cache, v_cache, block_tables, seq_lens, scale):
        return torch.empty_like(q)


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q ``[num_seqs, num_heads, head_dim]`` (fp32 or bf16) -> like q; see the reference."""
    return torch.ops.engine_cpu.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Like ``reference.store_kv`` for a step that writes every token (no -1 slots): decode steps.
    ``index_copy_`` traces into one fused in-place scatter (the reference's boolean mask would not)."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)
