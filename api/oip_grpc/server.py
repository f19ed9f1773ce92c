"""The gRPC server beside the HTTP one: grpcio's asyncio server on the same event loop and engine."""

from __future__ import annotations

import logging
from typing import Callable

import grpc

from engine import AsyncLLMEngine

from ..metrics import EngineMetrics
from ..options import ServerOptions
from .servicer import add_to_server

logger = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 64 << 20  # prompts and outputs of long contexts, as tritonclient allows


async def start_grpc(engine: AsyncLLMEngine, options: ServerOptions, metrics: EngineMetrics,
                     draining: Callable[[], bool]) -> grpc.aio.Server:
    """``draining``: whether the server is stopping (new calls get UNAVAILABLE)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    add_to_server(server, engine, options, metrics, draining)
    if server.add_insecure_port(options.grpc_address) == 0:
        raise RuntimeError(f"cannot listen for gRPC on {options.grpc_address}")
    await server.start()
    logger.info("OIP over gRPC on %s", options.grpc_address)
    return server
