"""The Open Inference Protocol v2 (KServe / Triton) against a real server: tritonclient and plain HTTP."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from conftest import metric
from tritonclient.utils import InferenceServerException

from engine.api.errors import APIError
from engine.api.oip.protocol import parse_infer

GREEDY = {"max_tokens": 8, "temperature": 0}
PROMPTS = ["The capital of France is", "One, two, three,"]
LONG_PROMPT = "hello " * 600  # over max_model_len 512


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as triton_client:
        yield triton_client


def generate_text(server, prompt: str, **params) -> dict:
    response = httpx.post(f"{server.url}/v2/models/{server.model}/generate",
                          json={"text_input": prompt, "parameters": {**GREEDY, **params}}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(text: str) -> list[dict]:
    """Each event's ``data`` as JSON: events end with a blank line, lines with CRLF, LF or CR."""
    events = []
    for block in text.replace("\r\n", "\n").replace("\r", "\n").split("\n\n"):
        data = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:  # a block of only ": ping" comments carries no event
            events.append(json.loads("\n".join(data)))
    return events


def text_of(result: triton.InferResult) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("text_output").ravel()]


def test_health_and_metadata(server, client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(server.model) and client.is_model_ready(server.model, "1")
    assert not client.is_model_ready("missing")
    assert not client.is_model_ready(server.model, "2")
    meta = client.get_server_metadata()
    assert meta["name"] == "engine" and meta["version"]
    assert {"generate", "binary_tensor_data"} <= set(meta["extensions"])
    model = client.get_model_metadata(server.model)
    assert model["name"] == server.model and model["versions"] == ["1"]
    assert model["inputs"][0] == {"name": "text_input", "datatype": "BYTES", "shape": [-1]}
    assert {"max_tokens", "temperature", "stop"} <= {i["name"] for i in model["inputs"]}
    assert model["outputs"] == [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}]
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("missing")
    assert httpx.get(f"{server.url}/v2/health/live").content == b""


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_generate(server, client, binary):
    expected = generate_text(server, PROMPTS[0])
    text_input = triton.InferInput("text_input", [1], "BYTES")
    text_input.set_data_from_numpy(np.array([PROMPTS[0].encode()], dtype=object), binary_data=binary)
    outputs = None if binary else [triton.InferRequestedOutput("text_output", binary_data=False)]
    result = client.infer(server.model, [text_input], outputs=outputs, request_id="req-7", parameters=GREEDY)
    assert text_of(result) == [expected["text_output"]]
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == server.model
    assert response["parameters"] == {"finish_reason": expected["finish_reason"], "completion_tokens": 8}


def test_infer_batch_and_scalar_inputs(server, client):
    expected = [generate_text(server, p, max_tokens=5)["text_output"] for p in PROMPTS]
    text_input = triton.InferInput("text_input", [2], "BYTES")
    text_input.set_data_from_numpy(np.array([p.encode() for p in PROMPTS], dtype=object))
    max_tokens = triton.InferInput("max_tokens", [1], "INT32")  # overrides the parameter
    max_tokens.set_data_from_numpy(np.array([5], dtype=np.int32))
    result = client.infer(server.model, [text_input, max_tokens], model_version="1", parameters=GREEDY)
    assert text_of(result) == expected


def test_generate_stream_concatenates_to_generate(server):
    expected = generate_text(server, PROMPTS[1], max_tokens=12)
    url = f"{server.url}/v2/models/{server.model}/versions/1/generate_stream"
    with httpx.stream("POST", url, json={"text_input": PROMPTS[1], "parameters": {**GREEDY, "max_tokens": 12}},
                      timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    assert "[DONE]" not in text
    events = sse_events(text)
    assert len(events) > 1 and all(e["model_name"] == server.model for e in events)
    assert "".join(e["text_output"] for e in events) == expected["text_output"]
    assert events[-1]["finish_reason"] == expected["finish_reason"]
    assert all("finish_reason" not in e for e in events[:-1])


def _infer_body(**tensor) -> dict:
    return {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["Hi"], **tensor}]}


BAD_REQUESTS = [
    # (id, endpoint, body, status, words the message must hold)
    ("invalid-json", "infer", b"{not json", 400, ["invalid JSON"]),
    ("invalid-json-generate", "generate", b"{not json", 400, ["invalid JSON"]),
    ("unknown-model", "models/missing/infer", _infer_body(), 404, ["missing"]),
    ("unknown-model-generate", "models/missing/generate", {"text_input": "Hi"}, 404, ["missing"]),
    ("int32-text-input", "infer", _infer_body(datatype="INT32", data=[1]), 400, ["text_input", "BYTES", "INT32"]),
    ("unknown-datatype", "infer", _infer_body(datatype="STRING"), 400, ["text_input", "STRING"]),
    ("count-mismatch", "infer", _infer_body(shape=[2]), 400, ["text_input", "[2]", "2", "1"]),
    ("negative-dim", "infer", _infer_body(shape=[-1]), 400, ["text_input", ">= 0", "-1"]),
    ("bytes-not-string", "infer", _infer_body(data=[5]), 400, ["text_input", "BYTES"]),
    ("no-inputs", "infer", {"inputs": []}, 400, ["inputs"]),
    ("missing-text-input", "infer",
     {"inputs": [{"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": [4]}]}, 400, ["text_input"]),
    ("unknown-input", "infer", {"inputs": [*_infer_body()["inputs"],
                                           {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
     400, ["prompt"]),
    ("unknown-output", "infer", {**_infer_body(), "outputs": [{"name": "logits"}]}, 400, ["logits", "text_output"]),
    ("max-tokens-negative", "infer", {**_infer_body(), "parameters": {"max_tokens": -1}}, 400, ["max_tokens", "-1"]),
    ("temperature-negative", "generate", {"text_input": "Hi", "parameters": {"temperature": -1}}, 400,
     ["temperature", "-1"]),
    ("max-tokens-stream", "generate_stream", {"text_input": "Hi", "max_tokens": -1}, 400, ["max_tokens"]),
    ("prompt-too-long", "infer", _infer_body(data=[LONG_PROMPT]), 400, ["512"]),
    ("prompt-too-long-stream", "generate_stream", {"text_input": LONG_PROMPT}, 400, ["512"]),
    ("wrong-version", "models/{model}/versions/2/infer", _infer_body(), 404, ["version", "2"]),
    # lone UTF-16 surrogates, legal as JSON escapes
    ("surrogate-generate", "generate", {"text_input": "\ud800"}, 400, ["text_input", "surrogate"]),
    ("surrogate-generate-stream", "generate_stream", {"text_input": "a\udfffb"}, 400, ["text_input", "surrogate"]),
    ("surrogate-infer", "infer", _infer_body(data=["\ud800"]), 400, ["inputs.0.data.0", "surrogate"]),
    ("surrogate-stop", "generate", {"text_input": "Hi", "parameters": {"stop": '["\\ud800"]'}}, 400,
     ["stop", "surrogate"]),
]


@pytest.mark.parametrize("endpoint,body,status,words", [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request(server, endpoint, body, status, words):
    path = endpoint.format(model=server.model) if "/" in endpoint else f"models/{server.model}/{endpoint}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.url}/v2/{path}", content=content, timeout=60,
                          headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()
    assert list(error) == ["error"] and isinstance(error["error"], str)
    for word in words:
        assert word in error["error"]
    assert generate_text(server, "Hi", max_tokens=2)["text_output"]  # the server still serves


def test_unknown_model_get_endpoints(server):
    for path in ("models/missing", "models/missing/ready", f"models/{server.model}/versions/3"):
        response = httpx.get(f"{server.url}/v2/{path}")
        assert response.status_code == 404 and isinstance(response.json()["error"], str)


def _wait_for_idle(server, deadline_s: float = 5.0) -> None:
    deadline = time.monotonic() + deadline_s
    while True:  # polling /metrics, bounded by the deadline
        running = metric(server, "engine:num_requests_running")
        used = metric(server, "engine:kv_cache_used_blocks")
        if running == 0 and used == 0:
            return
        assert time.monotonic() < deadline, f"still {running} running, {used} KV blocks used"
        time.sleep(0.05)


def test_stream_disconnect_aborts(server):
    _wait_for_idle(server)
    body = {"text_input": PROMPTS[0], "parameters": {"max_tokens": 400, "ignore_eos": True}}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{server.url}/v2/models/{server.model}/generate_stream", json=body) as response:
            lines = response.iter_lines()  # kept referenced: closing it would close the connection
            first = next(line for line in lines if line.startswith("data:"))
            assert "text_output" in json.loads(first[len("data:"):])
            assert metric(server, "engine:num_requests_running") == 1
    _wait_for_idle(server)


def test_generate_disconnect_aborts(server):
    _wait_for_idle(server)
    body = {"text_input": PROMPTS[0], "parameters": {"max_tokens": 400, "ignore_eos": True}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v2/models/{server.model}/generate", json=body, timeout=httpx.Timeout(60, read=0.5))
    _wait_for_idle(server)


# ---- without a server: the binary extension, parameters, and failures mid-stream ----

def _binary_body(prompts: list[str], **parameters) -> tuple[bytes, str]:
    raw = b"".join(len(p.encode()).to_bytes(4, "little") + p.encode() for p in prompts)
    header = json.dumps({"parameters": parameters, "inputs": [
        {"name": "text_input", "datatype": "BYTES", "shape": [len(prompts)], "parameters": {"binary_data_size": len(raw)}}]})
    return header.encode() + raw, str(len(header))


def test_parse_binary_inputs_and_parameters():
    body, length = _binary_body(["a", "héllo"], stop='["x", "y"]', priority=3, triton_foo=1, max_tokens="4",
                                exclude_input_in_output=False)
    request = parse_infer(body, length)
    assert request.prompts == ["a", "héllo"] and request.shape == [2]
    assert request.generation.params.max_tokens == 4 and request.generation.params.stop == ["x", "y"]
    assert request.generation.include_prompt
    assert parse_infer(*_binary_body(["a"], stop="x")).generation.params.stop == "x"


@pytest.mark.parametrize("mangle,words", [
    (lambda body, length: (body[:int(length)], None), ["Inference-Header-Content-Length"]),
    (lambda body, length: (body + b"!", length), ["1 bytes", "no input"]),
    (lambda body, length: (body[:-1], length), ["binary_data_size", "remain"]),
    (lambda body, length: (body, "x"), ["integer"]),
], ids=["no-header", "extra-bytes", "short", "bad-header"])
def test_parse_binary_errors(mangle, words):
    with pytest.raises(APIError) as err:
        parse_infer(*mangle(*_binary_body(["hello"])))
    assert err.value.status == 400 and all(word in err.value.message for word in words)
