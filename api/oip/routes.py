"""OIP routes: health, metadata, infer, generate and generate_stream, also under ``/versions/1``.

Handlers only check the model, parse, and hand over to ``OIPServing``; errors are ``APIError``s
that ``engine.api.errors`` turns into ``{"error": "..."}`` with their status.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from typing import AsyncGenerator, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from engine import AsyncLLMEngine

from ..options import ServerOptions
from ..disconnect import unless_disconnected
from ..errors import APIError
from .protocol import check_served, model_metadata, parse_generate, parse_infer
from .serving import OIPServing
from .tensors import HEADER_LENGTH

EXTENSIONS = ["generate", "parameters", "binary_tensor_data"]
MODEL_PATHS = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")


def server_version() -> str:
    try:
        return importlib.metadata.version("engine")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def build_router(engine: AsyncLLMEngine, options: ServerOptions) -> APIRouter:
    router = APIRouter()
    serving = OIPServing(engine, options.served_model_name, options.model_version)
    server_metadata = {"name": "engine", "version": server_version(), "extensions": EXTENSIONS}

    def check_model(request: Request) -> None:
        """404 unless the path names the served model and, if any, its version."""
        check_served(options, request.path_params["model"], request.path_params.get("version"))

    @router.get("/v2")
    async def get_server_metadata() -> dict:
        return server_metadata

    @router.get("/v2/health/live")
    async def live() -> Response:
        return Response(status_code=200)

    @router.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200 if engine.is_running else 400)

    async def get_model_metadata(request: Request) -> dict:
        check_model(request)
        return model_metadata(options.served_model_name, options.model_version)

    async def model_ready(request: Request) -> Response:
        check_model(request)
        return Response(status_code=200 if engine.is_running else 400)

    async def infer(request: Request) -> Response:
        check_model(request)
        parsed = parse_infer(await request.body(), request.headers.get(HEADER_LENGTH))
        body, header_length = await unless_disconnected(request, serving.infer(parsed))
        if header_length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})

    async def generate(request: Request) -> Response:
        check_model(request)
        parsed = parse_generate(await request.body())
        return JSONResponse(await unless_disconnected(request, serving.generate(parsed)))

    async def generate_stream(request: Request) -> Response:
        check_model(request)
        events = serving.generate_stream(parse_generate(await request.body()))
        # The first event is awaited here, so a failure before it is a plain JSON error.
        first = await unless_disconnected(request, anext(events))
        # The background close covers a client gone before the stream started (a no-op otherwise).
        return EventSourceResponse(_prepend(first, events), background=BackgroundTask(events.aclose))

    for prefix in MODEL_PATHS:
        router.add_api_route(prefix, get_model_metadata, methods=["GET"])
        router.add_api_route(f"{prefix}/ready", model_ready, methods=["GET"])
        router.add_api_route(f"{prefix}/infer", infer, methods=["POST"])
        router.add_api_route(f"{prefix}/generate", generate, methods=["POST"])
        router.add_api_route(f"{prefix}/generate_stream", generate_stream, methods=["POST"])
    return router


async def _prepend(first: str, events: AsyncGenerator[str, None]) -> AsyncIterator[str]:
    """``first``, then the rest of ``events``; closing this closes ``events`` (aborting the request)."""
    async with contextlib.aclosing(events):
        yield first
        async for event in events:
            yield event
