"""What completions and chat share: model and limit checks, sampling errors, ids, SSE framing."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import AsyncIterator

from engine import (AsyncLLMEngine, CompletionOutput, InvalidSamplingParam, RequestOutput, RequestRejected,
                    SamplingParams, StructuredOutputsParams)

from ..errors import APIError, as_api_error, error_body
from ..options import ServerOptions
from ..structured import FIELDS as CONSTRAINT_FIELDS
from ..structured import named_error, structured_outputs_from
from .protocol import SamplingFields

# Our SamplingParams names -> the OpenAI field a client sent.
_API_FIELD = {"logprobs": "logprobs", "prompt_logprobs": "logprobs"}
LOGPROB_FLOOR = -9999.0  # JSON has no -inf


class OpenAIServing:
    def __init__(self, engine: AsyncLLMEngine, options: ServerOptions) -> None:
        self.engine = engine
        self.options = options
        self.tokenizer = engine.tokenizer
        self.token_bytes = engine.token_bytes

    @property
    def model_name(self) -> str:
        return self.options.served_model_name

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(f"The model `{model}` does not exist; this server serves `{self.model_name}`.",
                           status=404, param="model", code="model_not_found")

    def check_common(self, body: SamplingFields) -> None:
        self.check_model(body.model)
        if body.stream_options is not None and not body.stream:
            raise APIError("stream_options is only allowed with stream: true", param="stream_options")

    async def constraint(self, body: SamplingFields, forced: StructuredOutputsParams | None = None,
                         begin_after: str | None = None) -> StructuredOutputsParams | None:
        """The output constraint the body asks for, or ``forced`` (the tool calls that tool_choice requires),
        compiled off the event loop: a grammar that cannot compile is a 400 naming the field the client used.
        ``begin_after``: a reasoning model's end of thinking, where the constraint starts."""
        asked = structured_outputs_from(body.model_dump(include=set(CONSTRAINT_FIELDS)))
        if asked is not None and forced is not None:
            raise APIError(f"{asked[1]} cannot be combined with a tool_choice that forces tool calls", param=asked[1])
        constraint, field = asked or (forced, "tool_choice")
        if constraint is None:
            return None
        if begin_after is not None:
            constraint = replace(constraint, begin_after=begin_after)
        try:
            await self.engine.compile_grammar(constraint)
        except InvalidSamplingParam as err:
            raise named_error(err, field) from None
        return constraint

    def sampling_params(self, body: SamplingFields, max_tokens: int, logprobs: int | None, logprobs_field: str,
                        prompt_logprobs: int | None = None,
                        constraint: StructuredOutputsParams | None = None) -> SamplingParams:
        try:
            return body.sampling_params(max_tokens, logprobs, prompt_logprobs, constraint)
        except InvalidSamplingParam as err:  # named as this API names the field
            field = logprobs_field if err.field in _API_FIELD else err.field
            raise APIError(str(err), param=field) from None

    def check_limits(self, num_prompt_tokens: int, n: int, max_tokens: int | None, prompt_field: str) -> None:
        """The engine's limits on this request, as OpenAI words them: the prompt plus max_tokens must fit
        the context (400 context_length_exceeded), n the server's sequences. The prompt is ``prompt_field``."""
        try:
            self.engine.check_request(num_prompt_tokens, n, max_tokens)
        except RequestRejected as err:
            # OpenAI names the prompt for any context overflow
            field = prompt_field if err.code == "context_length_exceeded" else err.field
            raise APIError(str(err), param=field, code=err.code) from None

    @staticmethod
    def new_id(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex}"

    @staticmethod
    def created() -> int:
        return int(time.time())

    def token_text(self, token_id: int) -> str:
        return self.token_bytes.text(token_id)

    @staticmethod
    def logprob_value(value: float) -> float:
        return max(value, LOGPROB_FLOOR)


def raise_if_aborted(completion: CompletionOutput) -> None:
    """A request the server aborted (shutdown, engine failure) ends its response as a 503."""
    if completion.finish_reason == "abort":
        raise APIError("the request was aborted by the server", status=503)


def usage(outputs: list[RequestOutput]) -> dict:
    """OpenAI's usage object over one response's requests (any output of each: counts come from its metrics)."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(o.metrics.num_generated_tokens for o in outputs)
    cached = sum(o.num_cached_tokens for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


async def sse_events(chunks: AsyncIterator[dict]) -> AsyncIterator[str]:
    """OpenAI SSE: one JSON object per event, an error after the 200 as one event, then [DONE]."""
    try:
        async for chunk in chunks:
            yield json.dumps(chunk, ensure_ascii=False)
    except Exception as err:  # noqa: BLE001 - reported to the client, which raises it
        yield json.dumps(error_body("/v1", as_api_error(err)))
    yield "[DONE]"
