"""Installed packages before this checkout's folders on ``sys.path``.

``python -m ...`` and ``python -c ...`` put the working directory first on ``sys.path``. In a
checkout of this repository that directory holds kernels/, api/ and scheduler/, which would then
shadow installed packages of the same names: transformers imports Hugging Face's ``kernels``, and
gets ours. The install maps our folders under ``engine.*``, so the checkout's root is only needed
for benchmarks/ and tests/; the entry points that run from it (``python -m engine``, the
benchmarks, the tests) move it to the end of ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def installed_packages_first() -> None:
    """Move this checkout's root, if on ``sys.path``, behind everything installed (a wheel: no-op)."""
    if not (CHECKOUT / "kernels" / "__init__.py").is_file():
        return
    rest = [entry for entry in sys.path if Path(entry or ".").resolve() != CHECKOUT]
    if len(rest) < len(sys.path):
        sys.path[:] = rest + [str(CHECKOUT)]
