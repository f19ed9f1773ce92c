"""A real ``engine serve`` process on 127.0.0.1 for the API tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmarks.common import free_port, wait_until_ready

TEMPLATE = Path(__file__).parent.parent / "fixtures" / "qwen2.5_chat_template.jinja"
STARTUP_TIMEOUT_S = 600  # generous for a loaded CI machine: a start takes seconds, compiling runs after it


@dataclass
class Server:
    url: str
    model: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


def start_server(model_path: Path, log_path: Path, *extra: str) -> Server:
    """Start the server and return once /health answers 200 (or fail with its log)."""
    port = free_port()
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", str(model_path), "--host", "127.0.0.1", "--port", str(port), *extra],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(f"{url}/health", process, log_path, STARTUP_TIMEOUT_S)
    name = "--served-model-name"
    served = extra[extra.index(name) + 1] if name in extra else model_path.name
    return Server(url, served, process, log_path)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(default_model, tmp_path_factory):
    """The default model served as 'smollm2' with a small context, shared by the API tests; its decode
    step compiled, as ``engine serve`` runs by default."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    srv = start_server(default_model, log_path, "--served-model-name", "smollm2", "--max-model-len", "512",
                       "--max-num-seqs", "64")
    yield srv
    stop_server(srv)


def metric(server: Server, name: str) -> float:
    """The value of one sample from /metrics (summed over label sets)."""
    text = httpx.get(f"{server.url}/metrics").text
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise KeyError(f"{name} not in /metrics")
    return total


def make_qwen_style(source: Path, folder: Path) -> Path:
    """``source`` with the Qwen2.5 chat template and, as in Qwen3's tokenizer, ``<think>`` and ``</think>`` as
    tokens of their own (two unused special tokens of the default tokenizer, renamed and made ordinary)."""
    shutil.copytree(source, folder, dirs_exist_ok=True)
    (folder / "chat_template.jinja").write_text(TEMPLATE.read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    renamed = {3: "<think>", 4: "</think>"}
    for token in tokenizer["added_tokens"]:
        if token["id"] in renamed:
            old, token["content"], token["special"] = token["content"], renamed[token["id"]], False
            tokenizer["model"]["vocab"][token["content"]] = tokenizer["model"]["vocab"].pop(old)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    return folder


@pytest.fixture(scope="session")
def qwen_style_model(tiny_model_factory, tmp_path_factory) -> Path:
    """A tiny Qwen-style model (random weights, the Qwen2.5 chat template in tests/fixtures): its outputs
    are valid only where a grammar makes them so, so assertions on it are about the server, not the
    model's skill."""
    return make_qwen_style(tiny_model_factory("qwen2", initializer_range=0.02), tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="session")
def qwen_server(qwen_style_model):
    """The tiny Qwen-style model served with the qwen3 reasoning parser, shared by the tool, Responses and
    Messages tests."""
    server = start_server(qwen_style_model, qwen_style_model / "server.log", "--served-model-name", "tiny-qwen",
                          "--enforce-eager", "--max-model-len", "512", "--reasoning-parser", "qwen3")
    yield server
    stop_server(server)
