"""What every API's serving class shares, whatever its wire format: the served model's name, the
engine's limits, output constraints compiled off the event loop, ids and timestamps."""

from __future__ import annotations

import time
import uuid

from engine import AsyncLLMEngine, CompletionOutput, InvalidSamplingParam, RequestRejected, StructuredOutputsParams

from .errors import APIError
from .options import ServerOptions
from .structured import named_error


class Serving:
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

    def check_limits(self, num_prompt_tokens: int, n: int, max_tokens: int | None, prompt_field: str) -> None:
        """The engine's limits on this request: the prompt plus max_tokens must fit the context (400
        context_length_exceeded, naming the prompt's field as OpenAI does), n the server's sequences."""
        try:
            self.engine.check_request(num_prompt_tokens, n, max_tokens)
        except RequestRejected as err:
            field = prompt_field if err.code == "context_length_exceeded" else err.field
            raise APIError(str(err), param=field, code=err.code) from None

    async def compile_constraint(self, constraint: StructuredOutputsParams, field: str) -> StructuredOutputsParams:
        """``constraint``, compiled off the event loop: one that cannot compile is a 400 naming ``field``,
        the field the client asked for it with."""
        try:
            await self.engine.compile_grammar(constraint)
        except InvalidSamplingParam as err:
            raise named_error(err, field) from None
        return constraint

    @staticmethod
    def new_id(prefix: str, separator: str = "-") -> str:
        return f"{prefix}{separator}{uuid.uuid4().hex}"

    @staticmethod
    def created() -> int:
        return int(time.time())

    def token_text(self, token_id: int) -> str:
        return self.token_bytes.text(token_id)


def raise_if_aborted(completion: CompletionOutput) -> None:
    """A request the server aborted (shutdown, engine failure) ends its response as a 503."""
    if completion.finish_reason == "abort":
        raise APIError("the request was aborted by the server", status=503)
