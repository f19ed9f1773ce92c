"""Block identity for prefix caching: SHA-256 chained over the parent block's hash and the token ids.

Python's ``hash()`` is predictable and collides (vLLM advisory GHSA-rm76-4mrf-v9r8); a chained
SHA-256 makes a block's hash stand for its whole prefix. ``extra_keys`` carries anything else
that changes the block's K/V (a LoRA or multimodal id), empty today.
"""

from __future__ import annotations

import hashlib
from array import array


def hash_block(parent: bytes | None, token_ids: tuple[int, ...] | list[int], extra_keys: tuple = ()) -> bytes:
    digest = hashlib.sha256()
    digest.update(parent or b"\0" * 32)
    digest.update(array("q", token_ids).tobytes())
    if extra_keys:
        digest.update(repr(extra_keys).encode())
    return digest.digest()
