"""Errors in the two shapes the APIs promise: OpenAI's ``{"error": {...}}`` and OIP's ``{"error": "..."}``.

Which shape a failure takes depends only on the path (``/v2`` is OIP, everything else
OpenAI), so FastAPI's own errors (bad JSON, 404, 405) come out right on both APIs.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import EngineDeadError

from .disconnect import ClientDisconnected

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away: nobody reads it, the log line shows it

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 503: "server_error"}


class APIError(Exception):
    """A request we refuse: its HTTP status, a message naming the field, and OpenAI's param/code."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code


def is_oip_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_response(path: str, error: APIError) -> JSONResponse:
    if is_oip_path(path):
        return JSONResponse({"error": error.message}, status_code=error.status)
    body = {"message": error.message, "type": _TYPES.get(error.status, "server_error"),
            "param": error.param, "code": error.code}
    return JSONResponse({"error": body}, status_code=error.status)


def openai_error_body(error: APIError) -> dict:
    """The error object sent as one SSE event when a stream fails after its 200 header."""
    return {"error": {"message": error.message, "type": _TYPES.get(error.status, "server_error"),
                      "param": error.param, "code": error.code}}


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI/pydantic's 422 as our 400, naming the first offending field."""
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    if first.get("type") == "json_invalid":
        return APIError(f"invalid JSON body: {first.get('msg', '')}", param=None)
    field = ".".join(location) or None
    return APIError(f"{field or 'body'}: {first.get('msg', 'invalid value')}", param=field)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(request.url.path, validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(request.url.path, APIError(str(exc.detail), status=exc.status_code))

    @app.exception_handler(ClientDisconnected)
    async def _gone(request: Request, exc: ClientDisconnected):  # its request was aborted already
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(EngineDeadError)
    async def _dead(request: Request, exc: EngineDeadError):
        return error_response(request.url.path, APIError(str(exc), status=503))

    @app.exception_handler(ValueError)
    async def _value(request: Request, exc: ValueError):  # the engine's validation, e.g. a bad sampling value
        return error_response(request.url.path, APIError(str(exc)))
