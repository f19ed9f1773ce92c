"""Benchmarks: one script per question; run as modules from the repo root (python -m benchmarks.NAME)."""

from engine.import_path import installed_packages_first

installed_packages_first()  # the repo root comes first on sys.path, and its kernels/ would shadow HF's `kernels`
