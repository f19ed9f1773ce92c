"""``engine serve`` as a Ray Serve application: replicas of the same app (the OpenAI, Anthropic and OIP
routes of api/app.py) behind Ray's HTTP proxy, scaled by Ray (``num_replicas`` or an autoscaling
config), and a canary split that sends a fraction of the traffic to a second version.

Ray does the cluster work; this module only says what a replica is. Each replica builds its own
engine and answers with an ``x-engine-replica`` header naming itself. ``pip install 'engine[ray]'``.

    from engine.api.ray_serve import ServedModel, engine_app
    from ray import serve
    serve.run(engine_app(ServedModel({"max_model_len": 2048}, "smollm2"), num_replicas=2))
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from ray import serve
from ray.serve import Application
from starlette.background import BackgroundTask

from engine import AsyncLLMEngine, EngineConfig

from .app import build_app
from .options import ServerOptions

REPLICA_HEADER = "x-engine-replica"
MAX_ONGOING_REQUESTS = 256  # per replica: the engine's own scheduler queues what it cannot run yet
HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive", "host"}


@dataclass(frozen=True)
class ServedModel:
    """One version of a model as ``engine serve`` would serve it: the engine's keywords (``model`` among
    them, None for the default model) and the server's options."""

    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    served_model_name: str = "model"
    model_version: str = "1"
    options: dict[str, Any] = field(default_factory=dict)  # other ServerOptions fields

    def server_options(self) -> ServerOptions:
        return ServerOptions(served_model_name=self.served_model_name, model_version=self.model_version,
                             **self.options)


@serve.ingress()  # the app is built per replica, after its engine (__serve_build_asgi_app__)
class EngineReplica:
    def __init__(self, served: ServedModel) -> None:
        kwargs = dict(served.engine_kwargs)
        self.engine = AsyncLLMEngine.from_config(EngineConfig.from_kwargs(kwargs.pop("model", None), **kwargs))
        self.options = served.server_options()
        self.replica = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = build_app(self.engine, self.options)

        @app.middleware("http")
        async def name_the_replica(request: Request, call_next):
            response = await call_next(request)
            response.headers[REPLICA_HEADER] = self.replica
            return response

        return app


def engine_app(served: ServedModel, num_replicas: int | None = 1, autoscaling_config: dict | None = None,
               name: str = "engine") -> Application:
    """The replicas of one model version: a fixed ``num_replicas``, or Ray's ``autoscaling_config``
    (``{"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16}``)."""
    deployment = serve.deployment(EngineReplica, name=name, max_ongoing_requests=MAX_ONGOING_REQUESTS,
                                  num_replicas=None if autoscaling_config else num_replicas,
                                  autoscaling_config=autoscaling_config)
    return deployment.bind(served)


@serve.ingress()
class CanaryRouter:
    """Sends each request to the canary version with probability ``canary_fraction``, else to the stable
    one, through Ray's HTTP proxy (each version is its own application under ``/<version>``); streams
    pass through as they come, and a client that leaves closes the upstream request, which aborts it."""

    def __init__(self, proxy_url: str, stable_prefix: str, canary_prefix: str, canary_fraction: float) -> None:
        if not 0.0 <= canary_fraction <= 1.0:
            raise ValueError(f"canary_fraction must be in [0, 1], got {canary_fraction}")
        self.proxy_url, self.fraction = proxy_url.rstrip("/"), canary_fraction
        self.prefixes = (stable_prefix, canary_prefix)
        self.client = httpx.AsyncClient(timeout=None)

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "POST", "OPTIONS"])
        async def route(path: str, request: Request):
            prefix = self.prefixes[1] if random.random() < self.fraction else self.prefixes[0]
            upstream = self.client.build_request(
                request.method, f"{self.proxy_url}{prefix}/{path}", params=request.query_params,
                headers=[(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP],
                content=await request.body())
            response = await self.client.send(upstream, stream=True)
            headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
            return StreamingResponse(response.aiter_raw(), status_code=response.status_code, headers=headers,
                                     background=BackgroundTask(response.aclose))

        return app


def canary_apps(stable: ServedModel, canary: ServedModel, canary_fraction: float, proxy_url: str,
                num_replicas: int = 1) -> dict[str, tuple[Application, str]]:
    """The three applications of a canary rollout, by name -> (application, route prefix): the two
    versions under ``/stable`` and ``/canary``, and the router at ``/``. Run each with ``serve.run``."""
    return {
        "stable": (engine_app(stable, num_replicas, name="stable"), "/stable"),
        "canary": (engine_app(canary, num_replicas, name="canary"), "/canary"),
        # the router only waits on the versions: as many requests in flight as they take together
        "router": (serve.deployment(CanaryRouter, name="router", max_ongoing_requests=2 * MAX_ONGOING_REQUESTS)
                   .bind(proxy_url, "/stable", "/canary", canary_fraction), "/"),
    }
