"""HTTP, gRPC and command-line front ends; they talk only to the engine's public API.

This folder installs as ``engine.api`` (pyproject.toml's ``package-dir``): the distribution's one
import root is ``engine``.
"""
