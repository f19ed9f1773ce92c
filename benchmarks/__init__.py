"""Benchmarks: one script per question; run as modules from the repo root (python -m benchmarks.NAME)."""

# The repo root comes first on sys.path here, and its kernels/ would shadow Hugging Face's `kernels`
# (which transformers imports); importing engine puts the root last (engine/import_path.py).
import engine  # noqa: F401
