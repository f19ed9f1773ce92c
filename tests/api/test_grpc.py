"""The Open Inference Protocol over gRPC, through the official tritonclient.grpc client against a real
``engine serve --grpc-port`` (with an API key, sent as call metadata)."""

from __future__ import annotations

import asyncio
import queue
import signal
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from conftest import free_port, metric, start_server, stop_server
from tritonclient.utils import InferenceServerException

KEY = "sesame"
HEADERS = {"authorization": f"Bearer {KEY}"}
GREEDY = {"max_tokens": 12, "temperature": 0.0}


@pytest.fixture(scope="module")
def grpc_server(default_model, tmp_path_factory):
    port = free_port()
    server = start_server(default_model, tmp_path_factory.mktemp("grpc") / "server.log", "--served-model-name",
                          "smollm2", "--grpc-port", str(port), "--api-key", KEY, "--max-model-len", "256",
                          "--enforce-eager")
    server.grpc_url = f"127.0.0.1:{port}"
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def client(grpc_server):
    with grpcclient.InferenceServerClient(grpc_server.grpc_url) as grpc_client:
        yield grpc_client


def text_input(*prompts: str) -> list:
    tensor = grpcclient.InferInput("text_input", [len(prompts)], "BYTES")
    tensor.set_data_from_numpy(np.array([p.encode() for p in prompts], dtype=object))
    return [tensor]


def texts(result) -> list[str]:
    return [value.decode() for value in result.as_numpy("text_output")]


def test_health_and_metadata(client, grpc_server):
    assert client.is_server_live(headers=HEADERS) and client.is_server_ready(headers=HEADERS)
    assert client.is_model_ready("smollm2", headers=HEADERS)
    assert client.get_server_metadata(headers=HEADERS).name == "engine"
    meta = client.get_model_metadata("smollm2", headers=HEADERS)
    assert meta.versions == ["1"] and "text_input" in [t.name for t in meta.inputs]
    assert [t.name for t in meta.outputs] == ["text_output"]


def test_infer_answers_a_batch_as_rest_does(client, grpc_server):
    result = client.infer("smollm2", text_input("The capital of France is", "1, 2, 3,"), parameters=GREEDY,
                          headers=HEADERS, request_id="batch-1")
    assert result.get_response().id == "batch-1" and result.as_numpy("text_output").shape == (2,)
    rest = httpx.post(f"{grpc_server.url}/v2/models/smollm2/infer", headers=HEADERS, timeout=60, json={
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [2],
                    "data": ["The capital of France is", "1, 2, 3,"]}], "parameters": GREEDY}).json()
    assert texts(result) == rest["outputs"][0]["data"]
    assert result.get_response().parameters["finish_reason"].string_param == rest["parameters"]["finish_reason"]
    assert metric(grpc_server, "engine:grpc_requests_total") > 0  # /metrics is open to scrapers


def test_streamed_pieces_add_up_to_the_infer_text(client):
    whole = texts(client.infer("smollm2", text_input("Once upon a time"), parameters=GREEDY, headers=HEADERS))[0]
    pieces: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: pieces.put((result, error)), headers=HEADERS)
    try:
        client.async_stream_infer("smollm2", text_input("Once upon a time"), parameters=GREEDY)
        streamed, done = [], False
        while not done:
            result, error = pieces.get(timeout=60)
            assert error is None, error
            streamed.append(texts(result)[0])
            done = "finish_reason" in result.get_response().parameters
        assert len(streamed) > 1 and "".join(streamed) == whole
        # a bad request in the stream is answered in the stream, which goes on
        client.async_stream_infer("smollm2", text_input("Hi"), parameters={"temperature": -1})
        result, error = pieces.get(timeout=60)
        assert result is None and "temperature" in str(error)
    finally:
        client.stop_stream()


@pytest.mark.parametrize("call, code, words", [
    (lambda c: c.infer("nope", text_input("Hi"), headers=HEADERS), "NOT_FOUND", "nope"),
    (lambda c: c.infer("smollm2", text_input("Hi"), parameters={"temperature": -1}, headers=HEADERS),
     "INVALID_ARGUMENT", "temperature"),
    (lambda c: c.infer("smollm2", [grpcclient.InferInput("max_tokens", [1], "INT32").set_data_from_numpy(
        np.array([4], dtype=np.int32))], headers=HEADERS), "INVALID_ARGUMENT", "text_input"),
    (lambda c: c.get_model_metadata("smollm2", model_version="7", headers=HEADERS), "NOT_FOUND", "version"),
    (lambda c: c.is_server_live(), "UNAUTHENTICATED", "API key"),
    (lambda c: c.is_server_live(headers={"authorization": "Bearer wrong"}), "UNAUTHENTICATED", "API key"),
])
def test_errors_are_status_codes_naming_the_problem(client, call, code, words):
    with pytest.raises(InferenceServerException) as raised:
        call(client)
    assert raised.value.status() == f"StatusCode.{code}" and words in raised.value.message()


def test_a_cancelled_stream_frees_its_request_and_blocks(client, grpc_server):
    pieces: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: pieces.put((result, error)), headers=HEADERS)
    client.async_stream_infer("smollm2", text_input("Write a long story about the sea."),
                              parameters={"max_tokens": 200, "ignore_eos": True})
    pieces.get(timeout=60)  # it is generating
    client.stop_stream(cancel_requests=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (metric(grpc_server, "engine:num_requests_running")
                                           or metric(grpc_server, "engine:kv_cache_used_blocks")):
        time.sleep(0.05)  # polling the server's own count, bounded by the deadline
    assert metric(grpc_server, "engine:num_requests_running") == 0
    assert metric(grpc_server, "engine:kv_cache_used_blocks") == 0


def test_200_grpc_streams_and_200_http_streams_at_once(grpc_server):
    """Each gRPC stream sends one request and reads its pieces to the final one; each HTTP stream reads a
    streamed OIP generation to its end."""

    async def grpc_stream(client: grpcaio.InferenceServerClient, index: int) -> str:
        async def requests():
            yield {"model_name": "smollm2", "inputs": text_input(f"Count to {index}:"),
                   "parameters": {"max_tokens": 4, "ignore_eos": True}}

        text = ""
        async for result, error in client.stream_infer(requests(), headers=HEADERS):
            assert error is None, error
            text += texts(result)[0]
            if "finish_reason" in result.get_response().parameters:
                break
        return text

    async def http_stream(http: httpx.AsyncClient, index: int) -> str:
        body = {"text_input": f"Count to {index}:", "parameters": {"max_tokens": 4, "ignore_eos": True}}
        async with http.stream("POST", f"{grpc_server.url}/v2/models/smollm2/generate_stream", json=body,
                               headers=HEADERS) as response:
            assert response.status_code == 200
            return "".join([line async for line in response.aiter_lines() if line.startswith("data:")])

    async def both():
        async with grpcaio.InferenceServerClient(grpc_server.grpc_url) as client, \
                httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=200)) as http:
            return await asyncio.gather(*(grpc_stream(client, i) for i in range(200)),
                                        *(http_stream(http, i) for i in range(200)))

    results = asyncio.run(both())
    assert len(results) == 400 and all(results)


def test_a_draining_server_refuses_new_calls_and_finishes_those_in_flight(default_model, tmp_path):
    port = free_port()
    server = start_server(default_model, tmp_path / "drain.log", "--served-model-name", "smollm2", "--grpc-port",
                          str(port), "--max-model-len", "256", "--enforce-eager")
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client, httpx.Client(timeout=120) as http:
            body = {"text_input": "Tell a long story.", "parameters": {"max_tokens": 120, "ignore_eos": True}}
            with http.stream("POST", f"{server.url}/v2/models/smollm2/generate_stream", json=body) as stream:
                lines = stream.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))  # in flight
                server.process.send_signal(signal.SIGTERM)
                deadline, refused = time.monotonic() + 10, None
                while refused is None and time.monotonic() < deadline:
                    try:
                        client.is_server_live()
                    except InferenceServerException as err:
                        refused = err
                assert refused is not None and refused.status() == "StatusCode.UNAVAILABLE"
                events = [line for line in lines if line.startswith("data:")]
                assert '"finish_reason": "length"' in events[-1]  # the stream in flight ran to its end
        server.process.wait(timeout=60)  # uvicorn ends by re-raising the signal, after its shutdown
        assert "Application shutdown complete" in server.log()
    finally:
        stop_server(server)
