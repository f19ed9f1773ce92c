"""Installed packages before this checkout's folders on ``sys.path``.

Python puts the working directory (``python -m``, ``python -c``) or the script's folder first on
``sys.path``, and Ray's workers put the driver's there too. In a checkout of this repository that
folder holds kernels/, api/ and scheduler/, which then shadow installed packages of the same
names: transformers (5.25 on) imports Hugging Face's ``kernels`` as soon as it reads a model
config, and would get ours. The install maps our folders under ``engine.*``, so the checkout's
root is only needed for benchmarks/ and tests/; importing ``engine`` moves it to the end of
``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = Path(__file__).parent


def installed_packages_first() -> None:
    """Move this checkout's root, if on ``sys.path``, behind everything installed. Installed (or laid out
    as installed, as the GPU suite does), the mapped folders sit inside engine/ and nothing moves."""
    if (PACKAGE / "kernels").is_dir():
        return
    checkout = PACKAGE.resolve().parent
    rest = [entry for entry in sys.path if Path(entry or ".").resolve() != checkout]
    if len(rest) < len(sys.path):
        sys.path[:] = rest + [str(checkout)]
