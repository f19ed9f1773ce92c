"""Converted models kept in the cache folder, so that a later start maps them instead of converting again.

Loading a GGUF or AWQ/GPTQ checkpoint on the CPU converts it: blocks unpacked, dense copies
dequantized, low-bit blocks repacked for torch's int4/int8 kernels (seconds for the default
model, minutes for a 7B one). The converted model is saved once, whole (``torch.save`` of the
module: its classes, settings and tensors), and a later start memory-maps it
(``torch.load(mmap=True)``) in tens of milliseconds. The file is named by a digest of the
checkpoint's identity (paths, sizes, modification times), the load settings, torch's version and
our model sources, so nothing stale is ever loaded. It takes about the model's dense size plus
its low-bit blocks; deleting it costs one conversion. It is a pickle: only files this code wrote
into the user's own cache folder are loaded so.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)
_MODEL_SOURCES = Path(__file__).parents[1]


def converted_model(folder: Path, identity: list[str], convert: Callable[[], nn.Module]) -> nn.Module:
    """The model ``convert`` builds, from ``folder`` if an earlier start with this ``identity`` saved it."""
    digest = hashlib.sha256("\0".join([*identity, torch.__version__, sources_digest((_MODEL_SOURCES,))]).encode())
    digest = digest.hexdigest()[:24]
    path = folder / f"model-{digest}.pt"
    if path.is_file():
        try:
            return torch.load(path, mmap=True, weights_only=False)
        except Exception as err:  # a file cut short (disk full): convert again and overwrite it
            logger.warning("could not map the converted model %s (%s); converting again", path, err)
    model = convert()
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
    torch.save(model, partial)
    partial.replace(path)
    return model


def checkpoint_identity(files: list[Path]) -> list[str]:
    """What tells one checkpoint apart from another: each file's path, size and modification time."""
    return [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(files)]


@functools.cache
def sources_digest(roots: tuple[Path, ...]) -> str:
    """A digest of the .py and .cpp files under ``roots``: what cached artifacts built by that code are keyed by."""
    digest = hashlib.sha256()
    for root in roots:
        for file in sorted(root.rglob("*")):
            if file.suffix in (".py", ".cpp"):
                digest.update(file.read_bytes())
    return digest.hexdigest()
