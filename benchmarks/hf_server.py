"""A transformers baseline behind an OpenAI-style streamed /v1/completions, for benchmarks/serve.py.

What a plain deployment of transformers looks like: one ``generate`` at a time (requests queue
on a lock), tokens streamed as they are produced. Only what the load generator sends is
implemented: token-id or text prompts, max_tokens, greedy, ignore_eos, stream with usage.

    python -m benchmarks.hf_server --port 8001 [--model FOLDER] [--dtype float32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from transformers.generation.streamers import BaseStreamer


class _TokenQueue(BaseStreamer):
    """Hands each generated token id to the event loop; ``generate`` first puts the prompt, skipped."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.queue, self.seen_prompt = loop, asyncio.Queue(), False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for token in value.reshape(-1).tolist():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, token)

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


def build_app(model_path: str, dtype: torch.dtype) -> FastAPI:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    name = model_path.rstrip("/").rsplit("/", 1)[-1]
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "transformers"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        prompt = body["prompt"]
        ids = prompt if isinstance(prompt, list) else tokenizer.encode(prompt)
        max_tokens = int(body.get("max_tokens", 16))
        streamer = _TokenQueue(asyncio.get_running_loop())

        def run() -> None:
            with lock, torch.inference_mode():
                model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, streamer=streamer,
                               min_new_tokens=max_tokens if body.get("ignore_eos") else 0,
                               pad_token_id=tokenizer.eos_token_id)

        threading.Thread(target=run, daemon=True).start()
        completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        async def events():
            count = 0
            while (token := await streamer.queue.get()) is not None:
                count += 1
                chunk = {"id": completion_id, "object": "text_completion", "created": created, "model": name,
                         "choices": [{"index": 0, "text": tokenizer.decode([token]), "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            usage = {"prompt_tokens": len(ids), "completion_tokens": count, "total_tokens": len(ids) + count}
            yield f"data: {json.dumps({'id': completion_id, 'object': 'text_completion', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    from engine.model.loader.resolve import default_model_folder

    model = args.model or str(default_model_folder())
    uvicorn.run(build_app(model, getattr(torch, args.dtype)), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
