"""What completions and chat share: the OpenAI spellings of sampling and constraint fields, SSE framing."""

from __future__ import annotations

import json
from typing import AsyncIterator

from engine import InvalidSamplingParam, RequestOutput, SamplingParams, StructuredOutputsParams

from ..errors import APIError, as_api_error, error_body
from ..serving import Serving
from ..structured import FIELDS as CONSTRAINT_FIELDS
from ..structured import structured_outputs_from
from .protocol import SamplingFields

# Our SamplingParams names -> the OpenAI field a client sent.
_API_FIELD = {"logprobs": "logprobs", "prompt_logprobs": "logprobs"}
LOGPROB_FLOOR = -9999.0  # JSON has no -inf


class OpenAIServing(Serving):
    def check_common(self, body: SamplingFields) -> None:
        self.check_model(body.model)
        if body.stream_options is not None and not body.stream:
            raise APIError("stream_options is only allowed with stream: true", param="stream_options")

    async def constraint(self, body: SamplingFields) -> StructuredOutputsParams | None:
        """The output constraint the body asks for (completions; chat goes through the chat pipeline), compiled."""
        asked = structured_outputs_from(body.model_dump(include=set(CONSTRAINT_FIELDS)))
        return None if asked is None else await self.compile_constraint(*asked)

    def sampling_params(self, body: SamplingFields, max_tokens: int, logprobs: int | None, logprobs_field: str,
                        prompt_logprobs: int | None = None,
                        constraint: StructuredOutputsParams | None = None) -> SamplingParams:
        try:
            return body.sampling_params(max_tokens, logprobs, prompt_logprobs, constraint)
        except InvalidSamplingParam as err:  # named as this API names the field
            field = logprobs_field if err.field in _API_FIELD else err.field
            raise APIError(str(err), param=field) from None

    @staticmethod
    def logprob_value(value: float) -> float:
        return max(value, LOGPROB_FLOOR)


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
