"""What completions and chat share: model and limit checks, sampling errors, ids, SSE framing."""

from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator

from engine import AsyncLLMEngine, CompletionOutput, InvalidSamplingParam, RequestOutput, SamplingParams

from ..errors import APIError, as_api_error, error_body
from ..options import ServerOptions
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

    def check_common(self, body: SamplingFields) -> None:
        if body.model is not None and body.model != self.model_name:
            raise APIError(f"The model `{body.model}` does not exist; this server serves `{self.model_name}`.",
                           status=404, param="model", code="model_not_found")
        if body.n < 1 or body.n > self.options.max_n:
            raise APIError(f"n must be from 1 to {self.options.max_n} (the server's limit), got {body.n}", param="n")
        if body.stream_options is not None and not body.stream:
            raise APIError("stream_options is only allowed with stream: true", param="stream_options")

    def sampling_params(self, body: SamplingFields, max_tokens: int, logprobs: int | None,
                        logprobs_field: str, prompt_logprobs: int | None = None) -> SamplingParams:
        try:
            return body.sampling_params(max_tokens, logprobs, prompt_logprobs)
        except InvalidSamplingParam as err:  # named as this API names the field
            field = logprobs_field if err.field in _API_FIELD else err.field
            raise APIError(str(err), param=field) from None

    def check_context(self, num_prompt_tokens: int, max_tokens: int | None, param: str) -> None:
        """400 context_length_exceeded when the prompt, or prompt + max_tokens, exceeds the context."""
        limit = self.engine.max_model_len
        wanted = num_prompt_tokens + (max_tokens or 0)
        if num_prompt_tokens > limit or wanted > limit:
            raise APIError(
                f"This model's maximum context length is {limit} tokens. However, you requested {wanted} tokens "
                f"({num_prompt_tokens} in the {param}, {max_tokens or 0} in the completion). "
                "Please reduce the length of the prompt or of max_tokens.",
                param=param, code="context_length_exceeded",
            )

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
