"""Triton versions of the kernel contract, imported lazily by ``engine.kernels.dispatch``.

On a CPU they run only under ``TRITON_INTERPRET=1`` (tests); on CUDA they are the default.
"""
