"""HTTP and command-line front ends; they talk only to the engine's public API."""
