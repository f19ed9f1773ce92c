"""Kernel contract: tensors in, tensors out; no knowledge of requests.

Glossary (shared with engine/ and scheduler/):
- ``k_cache``, ``v_cache``: per layer, ``[num_blocks, block_size, num_kv_heads, head_dim]``.
- ``block_tables``: int32 ``[num_seqs, max_blocks_per_seq]``, the blocks holding each
  sequence's tokens in order, padded with -1 (never read past ``seq_lens``).
- ``slot_mapping``: int64 ``[num_tokens]``, ``block_id * block_size + offset`` where each
  new token's K/V goes; -1 means "do not write".
- ``seq_lens``: int32 ``[num_seqs]``, tokens in the cache per sequence after this step's writes.
- ``cu_seqlens_q``: int32 ``[num_seqs + 1]``, prefix sums of each sequence's query count.

Each op is picked per call by ``ENGINE_KERNELS`` (see ``kernels.dispatch``); the torch
versions in ``kernels.reference`` are the CPU path and the test oracle.
"""

from . import reference
from .dispatch import dispatch

_T = "kernels.triton."
store_kv = dispatch(reference.store_kv, _T + "cache_ops:store_kv_triton")
paged_attention_decode = dispatch(reference.paged_attention_decode, _T + "paged_attention:paged_attention_decode_triton")
paged_attention_prefill = dispatch(reference.paged_attention_prefill, _T + "paged_attention:paged_attention_prefill_triton")
rms_norm = dispatch(reference.rms_norm, _T + "elementwise:rms_norm_triton")
rotary_embedding = dispatch(reference.rotary_embedding, _T + "elementwise:rotary_embedding_triton")
silu_and_mul = dispatch(reference.silu_and_mul, _T + "elementwise:silu_and_mul_triton")
w4a16_gemm = dispatch(reference.w4a16_gemm, _T + "quant_gemm:w4a16_gemm_triton")

__all__ = [
    "paged_attention_decode",
    "paged_attention_prefill",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "store_kv",
    "w4a16_gemm",
]
