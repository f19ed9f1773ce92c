"""Benchmarks: one script per question; run as modules from the repo root (python -m benchmarks.NAME)."""
