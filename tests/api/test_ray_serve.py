"""engine on Ray Serve, on a local Ray instance bound to 127.0.0.1 (usage stats off): two replicas share
streamed load from the official openai client, and a canary split sends its share to the second version."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import httpx
import openai
import pytest
from conftest import free_port

from engine.api.local_ray import LOCAL_RAY_ENV, init_ray

os.environ.update(LOCAL_RAY_ENV)  # before ray's first import
ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from engine.api.ray_serve import REPLICA_HEADER, ServedModel, canary_apps, engine_app  # noqa: E402


@pytest.fixture(scope="module")
def ray_proxy():
    init_ray(num_cpus=4, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def served(model, version: str = "1") -> ServedModel:
    return ServedModel({"model": str(model), "enforce_eager": True, "max_model_len": 256,
                        "kv_cache_memory_gb": 0.25}, "tiny", model_version=version)


def test_two_replicas_serve_64_concurrent_streams(ray_proxy, tiny_model_factory):
    serve.run(engine_app(served(tiny_model_factory("llama")), num_replicas=2), name="engine", route_prefix="/")
    client = openai.AsyncOpenAI(base_url=f"{ray_proxy}/v1", api_key="unused", max_retries=0, timeout=300)

    async def one(index: int) -> tuple[str, str, str | None]:
        raw = await client.chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "user", "content": f"Count to {index}"}], max_tokens=8, stream=True,
            extra_body={"ignore_eos": True})
        text, reason = "", None
        async for chunk in raw.parse():
            for choice in chunk.choices:
                text += choice.delta.content or ""
                reason = choice.finish_reason or reason
        return raw.headers[REPLICA_HEADER], text, reason

    async def all_of_them():
        return await asyncio.gather(*(one(i) for i in range(64)))

    results = asyncio.run(all_of_them())
    assert all(reason == "length" and text for _, text, reason in results)
    replicas = Counter(replica for replica, _, _ in results)
    assert len(replicas) == 2, replicas
    # each replica's own /metrics counts what it served
    served_by: dict[str, float] = {}
    for _ in range(200):
        answer = httpx.get(f"{ray_proxy}/metrics", timeout=30)
        served_by[answer.headers[REPLICA_HEADER]] = _metric(answer.text, "engine:request_success_total")
        if len(served_by) == 2:
            break
    assert set(served_by) == set(replicas) and all(count > 0 for count in served_by.values())
    assert sum(served_by.values()) == 64
    serve.delete("engine")


def test_an_autoscaling_deployment_serves(ray_proxy, tiny_model_factory):
    config = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4}
    serve.run(engine_app(served(tiny_model_factory("llama")), autoscaling_config=config), name="auto",
              route_prefix="/auto")
    answer = httpx.post(f"{ray_proxy}/auto/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2},
                        timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2
    serve.delete("auto")


def test_a_canary_gets_its_share_of_the_traffic(ray_proxy, tiny_model_factory):
    model = tiny_model_factory("llama")
    for name, (app, prefix) in canary_apps(served(model, "1"), served(model, "2"), 0.2, ray_proxy).items():
        serve.run(app, name=name, route_prefix=prefix)
    async def one(client: httpx.AsyncClient) -> str:
        answer = await client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 1})
        assert answer.status_code == 200, answer.text
        return answer.json()["system_fingerprint"]

    async def two_hundred() -> list[str]:
        async with httpx.AsyncClient(base_url=ray_proxy, timeout=120) as client:
            return await asyncio.gather(*(one(client) for _ in range(200)))

    versions = Counter(asyncio.run(two_hundred()))
    assert abs(versions["2"] / 200 - 0.2) <= 0.1, versions
    with httpx.Client(base_url=ray_proxy, timeout=60) as client:
        assert {m["version"] for m in client.get("/canary/v1/models").json()["data"]} == {"2"}
        assert client.get("/v2/models/tiny").json()["versions"] in (["1"], ["2"])
    for name in ("router", "canary", "stable"):
        serve.delete(name)


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))
