"""Kernel contract: tensors in, tensors out; no knowledge of requests.

This folder installs as ``engine.kernels`` (pyproject.toml's ``package-dir``): the distribution's
one import root is ``engine``, so it takes no name of another project (Hugging Face's ``kernels``).

Glossary (shared with engine/ and scheduler/):
- ``k_cache``, ``v_cache``: per layer, ``[num_blocks, block_size, num_kv_heads, head_dim]``.
- ``block_tables``: int32 ``[num_seqs, max_blocks_per_seq]``, the blocks holding each
  sequence's tokens in order, padded with -1 (never read past ``seq_lens``).
- ``slot_mapping``: int64 ``[num_tokens]``, ``block_id * block_size + offset`` where each
  new token's K/V goes; -1 means "do not write".
- ``seq_lens``: int32 ``[num_seqs]``, tokens in the cache per sequence after this step's writes.
- ``cu_seqlens_q``: int32 ``[num_seqs + 1]``, prefix sums of each sequence's query count.

Two sets implement it (``engine.kernels.dispatch``): the torch references in ``engine.kernels.reference``
(the CPU path and the test oracle) and the Triton kernels in ``engine.kernels.triton``.
"""

from .dispatch import CHOICES, OPS, KernelSet, kernel_set, resolve_kernels

__all__ = ["CHOICES", "OPS", "KernelSet", "kernel_set", "resolve_kernels"]
