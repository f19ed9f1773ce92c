"""``inference.GRPCInferenceService``: the Open Inference Protocol over gRPC (KServe's v2 RPCs and Triton's
ModelStreamInfer), on the same engine and the same request handling as the REST routes.

Errors are gRPC status codes with the REST message (INVALID_ARGUMENT naming the field, NOT_FOUND for
another model, UNAVAILABLE when the engine is not running, UNAUTHENTICATED without the API key). In a
stream a request's error is its response's ``error_message``, as Triton sends it, and the stream goes
on. While the server drains (from SIGTERM), new calls get UNAVAILABLE and calls in flight finish. A
cancelled call closes the engine's output iterator, which aborts the request and frees its KV
blocks. Every call is counted in /metrics (``engine:grpc_requests_total``) by method and code.
"""

from __future__ import annotations

import functools
from typing import Any, AsyncIterator, Callable

import grpc

from engine import AsyncLLMEngine

from ..errors import APIError, as_api_error
from ..metrics import EngineMetrics
from ..oip.protocol import InferRequest, check_served, finish_reason_parameter, infer_request_from, model_metadata
from ..oip.routes import EXTENSIONS, server_version
from ..oip.serving import OIPServing
from ..options import ServerOptions
from . import grpc_predict_v2_pb2 as pb
from . import grpc_predict_v2_pb2_grpc as pb_grpc
from .messages import infer_response, request_form

STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                404: grpc.StatusCode.NOT_FOUND, 503: grpc.StatusCode.UNAVAILABLE}


def handled(method):
    """A unary RPC: the API key checked, failures as status codes, the call counted."""

    @functools.wraps(method)
    async def call(self: "InferenceServicer", request, context: grpc.aio.ServicerContext):
        code = grpc.StatusCode.CANCELLED  # unless the call gets further
        try:
            self.admit(context)
            response = await method(self, request, context)
            code = grpc.StatusCode.OK
            return response
        except Exception as err:  # noqa: BLE001 - every failure is a status for the client
            error = as_api_error(err)
            code = STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)
            await context.abort(code, error.message)
        finally:
            self.metrics.count_grpc(method.__name__, code.name)

    return call


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, engine: AsyncLLMEngine, options: ServerOptions, metrics: EngineMetrics,
                 draining: Callable[[], bool]) -> None:
        self.engine, self.options, self.metrics, self.draining = engine, options, metrics, draining
        self.serving = OIPServing(engine, options.served_model_name, options.model_version)

    def admit(self, context: grpc.aio.ServicerContext) -> None:
        """A new call: refused while the server drains; the API key, when the server has one, from the call's
        metadata (as Bearer or x-api-key)."""
        if self.draining():
            raise APIError("the server is shutting down", status=503)
        if self.options.api_key is None:
            return
        metadata = {k.lower(): v for k, v in context.invocation_metadata() or ()}
        if not self.options.accepts_key(metadata.get("authorization", ""), metadata.get("x-api-key", "")):
            raise APIError("invalid or missing API key", status=401)

    @handled
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @handled
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.engine.is_running)

    @handled
    async def ModelReady(self, request, context):
        check_served(self.options, request.name, request.version)
        return pb.ModelReadyResponse(ready=self.engine.is_running)

    @handled
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="engine", version=server_version(), extensions=EXTENSIONS)

    @handled
    async def ModelMetadata(self, request, context):
        check_served(self.options, request.name, request.version)
        meta = model_metadata(self.options.served_model_name, self.options.model_version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]])

    @handled
    async def ModelInfer(self, request, context):
        parsed = self._parse(request)
        result = await self.serving.infer_result(parsed)
        return self._response(parsed, result.texts, {"finish_reason": finish_reason_parameter(result.finish_reasons),
                                                      "completion_tokens": result.completion_tokens})

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest], context):
        """Each request's generation as it comes: one response per new piece of text, the last with its
        ``finish_reason`` and ``triton_final_response``."""
        code = grpc.StatusCode.CANCELLED
        try:
            self.admit(context)
            async for request in requests:
                async for response in self._stream_one(request):
                    yield response
            code = grpc.StatusCode.OK
        except APIError as err:  # draining, or the API key: the whole stream is refused
            code = STATUS_CODES.get(err.status, grpc.StatusCode.INTERNAL)
            await context.abort(code, err.message)
        finally:
            self.metrics.count_grpc("ModelStreamInfer", code.name)

    async def _stream_one(self, request: pb.ModelInferRequest) -> AsyncIterator[pb.ModelStreamInferResponse]:
        try:
            parsed = self._parse(request)
            if len(parsed.prompts) != 1:
                raise APIError(f"a streamed request takes one prompt in text_input, got shape {parsed.shape}")
            prefix = parsed.prompts[0] if parsed.generation.include_prompt else ""
            async for completion in self.serving.stream(parsed.prompts[0], parsed.generation):
                if not completion.text and not completion.finished:
                    continue
                parameters: dict[str, Any] = {"triton_final_response": completion.finished}
                if completion.finished:
                    parameters["finish_reason"] = completion.finish_reason
                yield pb.ModelStreamInferResponse(infer_response=self._response(
                    parsed, [prefix + completion.text], parameters))
                prefix = ""
        except Exception as err:  # noqa: BLE001 - this request's error; the stream goes on
            yield pb.ModelStreamInferResponse(error_message=as_api_error(err).message)

    def _parse(self, request: pb.ModelInferRequest) -> InferRequest:
        check_served(self.options, request.model_name, request.model_version)
        form, binary = request_form(request)
        return infer_request_from(form, binary, has_binary=len(request.raw_input_contents) > 0)

    def _response(self, request: InferRequest, texts: list[str], parameters: dict) -> pb.ModelInferResponse:
        return infer_response(self.options.served_model_name, self.options.model_version, request, texts, parameters)


def add_to_server(server: grpc.aio.Server, engine: AsyncLLMEngine, options: ServerOptions, metrics: EngineMetrics,
                  draining: Callable[[], bool]) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(engine, options, metrics, draining), server)
