"""``build_app(engine, ...)``: one FastAPI app serving the OpenAI API, Anthropic's Messages API and the Open
Inference Protocol."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from engine import AsyncLLMEngine

from .anthropic.routes import build_router as build_anthropic_router
from .errors import APIError, error_response, install_error_handlers
from .metrics import EngineMetrics
from .oip.routes import build_router as build_oip_router
from .openai.routes import build_router as build_openai_router
from .options import ServerOptions
from .request_log import log_finished_request

logger = logging.getLogger(__name__)

GRPC_GRACE_S = 10.0
# Probes and scrapers call these without credentials, and the chat page loads without them (its calls
# to the API carry the key).
OPEN_PATHS = ("/health", "/v2/health/live", "/v2/health/ready", "/metrics", "/")
UI_FOLDER = Path(__file__).parent / "ui"


def build_app(engine: AsyncLLMEngine, options: ServerOptions) -> FastAPI:
    metrics = EngineMetrics(engine, options.served_model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        logger.info("serving %s", options.served_model_name)
        draining = lambda: app.state.draining  # noqa: E731 - set when a signal asks the server to stop
        grpc_server = None
        if options.grpc_address:  # gRPC's runtime is imported only by a server that serves it
            from .oip_grpc.server import start_grpc

            grpc_server = await start_grpc(engine, options, metrics, draining)
        try:
            yield
        finally:
            if grpc_server is not None:  # new calls get UNAVAILABLE, calls in flight get the grace period
                await grpc_server.stop(GRPC_GRACE_S)
            engine.shutdown()

    app = FastAPI(title="engine", lifespan=lifespan)
    app.state.draining = False
    install_error_handlers(app)
    engine.add_output_listener(log_finished_request)

    if options.api_key:
        @app.middleware("http")
        async def require_api_key(request: Request, call_next):
            path = request.url.path
            if request.method != "OPTIONS" and path not in OPEN_PATHS and not path.startswith("/ui/"):
                headers = request.headers
                if not options.accepts_key(headers.get("authorization", ""), headers.get("x-api-key", "")):
                    return error_response(path, APIError("invalid or missing API key", status=401))
            return await call_next(request)

    if options.allowed_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=options.allowed_origins, allow_credentials=options.allow_credentials,
            allow_methods=options.allowed_methods, allow_headers=options.allowed_headers,
        )

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if engine.is_running else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if options.ui:
        @app.get("/", include_in_schema=False)
        async def chat_page() -> FileResponse:
            return FileResponse(UI_FOLDER / "index.html")

        app.mount("/ui", StaticFiles(directory=UI_FOLDER), name="ui")

    app.include_router(build_openai_router(engine, options))
    app.include_router(build_anthropic_router(engine, options))
    app.include_router(build_oip_router(engine, options))
    return app
