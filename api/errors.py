"""Errors in the three shapes the APIs promise: OpenAI's ``{"error": {...}}``, Anthropic's
``{"type": "error", "error": {...}}`` and OIP's ``{"error": "..."}``.

Which shape a failure takes depends only on the path (``/v2`` is OIP, ``/v1/messages`` Anthropic,
everything else OpenAI), so FastAPI's own errors (bad JSON, 404, 405) come out right on every API.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import EngineDeadError, InvalidSamplingParam, RequestRejected

from .disconnect import ClientDisconnected

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away: nobody reads it, the log line shows it

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 503: "server_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                    429: "rate_limit_error", 503: "overloaded_error"}


class APIError(Exception):
    """A request we refuse: its HTTP status, a message naming the field, and OpenAI's param/code."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code


def is_oip_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def is_anthropic_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def as_api_error(err: BaseException) -> APIError:
    """The one place a failure becomes what the client is told: status, message, field."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, RequestValidationError):
        return _validation_error(err)
    if isinstance(err, StarletteHTTPException):
        return APIError(str(err.detail), status=err.status_code)
    if isinstance(err, EngineDeadError):  # the model is not ready to serve
        return APIError(str(err), status=503)
    if isinstance(err, InvalidSamplingParam):
        return APIError(str(err), param=err.field)
    if isinstance(err, RequestRejected):  # past the engine's limits (context, n)
        return APIError(str(err), param=err.field, code=err.code)
    if isinstance(err, ValueError):  # the engine's validation, e.g. a prompt longer than the context
        return APIError(str(err))
    return APIError(f"internal error: {err}", status=500)


def error_body(path: str, error: APIError) -> dict:
    """The error in the shape of the API that ``path`` belongs to (also one SSE event of a failed stream)."""
    if is_oip_path(path):
        return {"error": error.message}
    if is_anthropic_path(path):
        return anthropic_error(error)
    return {"error": {"message": error.message, "type": _TYPES.get(error.status, "server_error"),
                      "param": error.param, "code": error.code}}


def anthropic_error(error: APIError) -> dict:
    """Anthropic's error object (also the data of a failed stream's ``error`` event)."""
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(error.status, "api_error"),
                                       "message": error.message}}


def error_response(path: str, error: APIError) -> JSONResponse:
    return JSONResponse(error_body(path, error), status_code=error.status)


def _validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI/pydantic's 422 as our 400, naming the first offending field."""
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    if first.get("type") == "json_invalid":
        return APIError(f"invalid JSON body: {first.get('msg', '')}", param=None)
    field = ".".join(location) or None
    return APIError(f"{field or 'body'}: {first.get('msg', 'invalid value')}", param=field)


def install_error_handlers(app: FastAPI) -> None:
    async def _refused(request: Request, exc: Exception):
        return error_response(request.url.path, as_api_error(exc))

    for kind in (APIError, RequestValidationError, StarletteHTTPException, EngineDeadError, ValueError):
        app.add_exception_handler(kind, _refused)

    @app.exception_handler(ClientDisconnected)
    async def _gone(request: Request, exc: ClientDisconnected):  # its request was aborted already
        return Response(status_code=CLIENT_CLOSED_REQUEST)
