"""POST /tokenize and /detokenize in vLLM's shapes, against the served default model."""

from __future__ import annotations

import httpx
import pytest


def post(server, route: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json=body, timeout=60)


def test_tokenize_gives_the_ids_the_server_feeds_the_model(server):
    text = "Paged attention, 2024: é"
    answer = post(server, "/tokenize", {"prompt": text, "return_token_strs": True}).json()
    assert answer["count"] == len(answer["tokens"]) > 0 and answer["max_model_len"] == 512
    assert "".join(answer["token_strs"]) == text
    assert post(server, "/detokenize", {"tokens": answer["tokens"]}).json() == {"prompt": text}
    messages = [{"role": "user", "content": "Hi there"}]
    chat = post(server, "/tokenize", {"model": server.model, "messages": messages}).json()
    usage = post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 1}).json()["usage"]
    assert chat["count"] == usage["prompt_tokens"]  # the chat template, as the chat endpoint renders it


@pytest.mark.parametrize("route, body, status, param", [
    ("/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, 400, "prompt"),
    ("/tokenize", {}, 400, "prompt"),
    ("/tokenize", {"prompt": "x", "model": "other"}, 404, "model"),
    ("/detokenize", {"tokens": [10**9]}, 400, "tokens"),
    ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
])
def test_bad_requests_name_the_field(server, route, body, status, param):
    answer = post(server, route, body)
    assert answer.status_code == status and answer.json()["error"]["param"] == param
