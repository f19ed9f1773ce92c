"""OIP inference over the ``AsyncLLMEngine``: infer (B prompts at once), generate, generate_stream.

Each prompt is one engine request with a fresh uuid (a client's ``id`` is only echoed). Work
runs inside ``aclosing`` over the engine's iterator, so leaving early (a cancelled task, a
closed stream) aborts the request and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, replace
from typing import AsyncGenerator, Awaitable, TypeVar

from engine import AsyncLLMEngine, CompletionOutput, RequestOutputKind

from ..errors import as_api_error
from .protocol import GenerateRequest, Generation, InferRequest, encode_infer_response

T = TypeVar("T")


@dataclass(frozen=True)
class InferResult:
    texts: list[str]
    finish_reasons: list[str]
    completion_tokens: int


class OIPServing:
    def __init__(self, engine: AsyncLLMEngine, model_name: str, model_version: str) -> None:
        self.engine = engine
        self.model_name, self.model_version = model_name, model_version

    async def infer(self, request: InferRequest) -> tuple[bytes, int | None]:
        """The answer body, and its JSON header's length when binary output follows it."""
        result = await self.infer_result(request)
        return encode_infer_response(self.model_name, self.model_version, request, result.texts,
                                     result.finish_reasons, result.completion_tokens)

    async def infer_result(self, request: InferRequest) -> InferResult:
        """Every prompt's text (after the prompt itself unless exclude_input_in_output), as REST and gRPC send it."""
        completions = await _all_or_none([self._complete(p, request.generation) for p in request.prompts])
        prefixes = request.prompts if request.generation.include_prompt else [""] * len(completions)
        return InferResult([p + c.text for p, c in zip(prefixes, completions)],
                           [c.finish_reason for c in completions], sum(len(c.token_ids) for c in completions))

    async def stream(self, prompt: str, generation: Generation) -> AsyncGenerator[CompletionOutput, None]:
        """One prompt's outputs as it generates, each with only the new text (gRPC's ModelStreamInfer)."""
        params = replace(generation.params, output_kind=RequestOutputKind.DELTA)
        async with contextlib.aclosing(self.engine.generate(prompt, params, _new_request_id())) as outputs:
            async for output in outputs:
                yield output.outputs[0]

    async def generate(self, request: GenerateRequest) -> dict:
        completion = await self._complete(request.prompt, request.generation)
        prefix = request.prompt if request.generation.include_prompt else ""
        return {**self._names(), "text_output": prefix + completion.text, "finish_reason": completion.finish_reason}

    async def generate_stream(self, request: GenerateRequest) -> AsyncGenerator[str, None]:
        """SSE data: one JSON event per step with the new text, the last with ``finish_reason``.

        A failure before the first event is raised, so the route can answer it with its status;
        after it, the failure is one ``{"error": ...}`` event that ends the stream.
        """
        prefix = request.prompt if request.generation.include_prompt else ""
        first = True
        async with contextlib.aclosing(self.stream(request.prompt, request.generation)) as completions:
            try:
                async for completion in completions:  # only the new text in each
                    if not completion.text and not completion.finished:
                        continue
                    event = {**self._names(), "text_output": (prefix if first else "") + completion.text}
                    if completion.finished:
                        event["finish_reason"] = completion.finish_reason
                    first = False
                    yield json.dumps(event)
            except Exception as err:
                if first:
                    raise as_api_error(err) from err
                yield json.dumps({"error": as_api_error(err).message})

    async def _complete(self, prompt: str, generation: Generation) -> CompletionOutput:
        final = None
        try:
            params = replace(generation.params, output_kind=RequestOutputKind.FINAL_ONLY)
            async with contextlib.aclosing(self.engine.generate(prompt, params, _new_request_id())) as outputs:
                async for final in outputs:
                    pass
        except Exception as err:
            raise as_api_error(err) from err
        return final.outputs[0]

    def _names(self) -> dict:
        return {"model_name": self.model_name, "model_version": self.model_version}


async def _all_or_none(works: list[Awaitable[T]]) -> list[T]:
    """Run concurrently; the first failure cancels the others (aborting their requests) and is raised."""
    tasks = [asyncio.ensure_future(work) for work in works]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _new_request_id() -> str:
    return f"oip-{uuid.uuid4().hex}"
