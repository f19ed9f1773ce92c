"""Servers under test: a free loopback port, and waiting (bounded) until one answers."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Callable

import httpx

STARTUP_TIMEOUT_S = 600  # a first start compiles the decode step (~5 min cold on 2 cores, ~30 s cached)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, log: Callable[[], str]) -> None:
    """Return once ``url`` answers 200; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling for readiness, bounded by the deadline
    process.kill()
    raise RuntimeError(f"server did not become ready in {STARTUP_TIMEOUT_S} s:\n{log()}")
