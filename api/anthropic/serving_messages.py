"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API on the chat pipeline.

The reply's content blocks (thinking, text, tool_use) are the output's blocks; a stream sends them as
Anthropic's events: ``message_start``, per block ``content_block_start``, ``content_block_delta``
(``thinking_delta``, ``text_delta``, ``input_json_delta``) and ``content_block_stop``, then
``message_delta`` with the stop reason and ``message_stop``.
"""

from __future__ import annotations

import contextlib
import json
from typing import AsyncIterator

from fastapi import Request
from sse_starlette import EventSourceResponse

from engine import AsyncLLMEngine, CompletionOutput, RequestOutput

from ..chat_pipeline import ChatPipeline, PreparedChat
from ..disconnect import unless_disconnected
from ..errors import APIError, anthropic_error
from ..options import ServerOptions
from ..output_blocks import Block, BlockEvent
from ..serving import Serving, raise_if_aborted
from ..streaming import last_outputs, merge, typed_sse
from .messages_input import messages_query
from .protocol import CountTokensRequest, MessagesRequest

DELTA = {"reasoning": ("thinking_delta", "thinking"), "text": ("text_delta", "text"),
         "tool_call": ("input_json_delta", "partial_json")}


class AnthropicServingMessages(Serving):
    def __init__(self, engine: AsyncLLMEngine, options: ServerOptions) -> None:
        super().__init__(engine, options)
        self.pipeline = ChatPipeline(engine, options)

    def count_tokens(self, body: CountTokensRequest) -> dict:
        self.check_model(body.model)
        return {"input_tokens": len(self.pipeline.render(messages_query(body)).token_ids)}

    async def create(self, body: MessagesRequest, raw: Request):
        self.check_model(body.model)
        if body.max_tokens < 1:
            raise APIError(f"max_tokens must be >= 1, got {body.max_tokens}", param="max_tokens")
        prepared = await self.pipeline.prepare(messages_query(body, body.max_tokens))
        params = prepared.sampling_params(body.stream, stop=body.stop_sequences, temperature=body.temperature,
                                          top_p=body.top_p, top_k=body.top_k)
        message_id = self.new_id("msg", "_")
        stream = self.engine.generate(prepared.prompt, params, message_id, prompt_token_ids=prepared.token_ids)
        if body.stream:
            return EventSourceResponse(typed_sse(self._events(message_id, stream, prepared), anthropic_error))
        (final,) = await unless_disconnected(raw, last_outputs([stream]))
        (completion,) = final.outputs
        raise_if_aborted(completion)
        blocks = prepared.output_blocks(completion.text)
        reason, sequence = _stop(completion, blocks.made_calls())
        return {**self._message(message_id, final), "content": [_content_block(b) for b in blocks.blocks],
                "stop_reason": reason, "stop_sequence": sequence}

    def _message(self, message_id: str, output: RequestOutput) -> dict:
        """The message with no content yet (as ``message_start`` sends it)."""
        cached = output.num_cached_tokens
        usage = {"input_tokens": len(output.prompt_token_ids) - cached, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": cached, "output_tokens": output.metrics.num_generated_tokens}
        return {"id": message_id, "type": "message", "role": "assistant", "model": self.model_name, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": usage}

    async def _events(self, message_id: str, stream: AsyncIterator[RequestOutput],
                      prepared: PreparedChat) -> AsyncIterator[dict]:
        blocks = prepared.output_blocks()
        final = None
        async with contextlib.aclosing(merge([stream])) as outputs:
            async for _, output in outputs:  # each output holds only what is new (DELTA)
                (completion,) = output.outputs
                raise_if_aborted(completion)
                if final is None:  # the first output knows how much of the prompt the cache held
                    start = self._message(message_id, output)
                    start["usage"]["output_tokens"] = 0
                    yield {"type": "message_start", "message": start}
                final = output
                for change in blocks.feed(completion.text, final=completion.finished):
                    yield _block_event(change)
        (completion,) = final.outputs
        reason, sequence = _stop(completion, blocks.made_calls())
        yield {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
               "usage": self._message(message_id, final)["usage"]}
        yield {"type": "message_stop"}


def _block_event(change: BlockEvent) -> dict:
    if change.kind == "start":
        return {"type": "content_block_start", "index": change.index, "content_block": _content_block(change.block)}
    if change.kind == "delta":
        kind, key = DELTA[change.block.kind]
        return {"type": "content_block_delta", "index": change.index, "delta": {"type": kind, key: change.delta}}
    return {"type": "content_block_stop", "index": change.index}


def _content_block(block: Block) -> dict:
    if block.kind == "reasoning":
        return {"type": "thinking", "thinking": block.text, "signature": ""}
    if block.kind == "text":
        return {"type": "text", "text": block.text}
    return {"type": "tool_use", "id": "toolu_" + block.call_id.removeprefix("call_"), "name": block.name,
            "input": _arguments(block.text)}


def _arguments(text: str) -> dict:
    """A call's arguments as the object Anthropic's ``input`` is ({} before any, or where the model's
    JSON is not an object: only a grammar-forced call is sure to be one)."""
    try:
        value = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _stop(completion: CompletionOutput, made_calls: bool) -> tuple[str, str | None]:
    """Anthropic's stop_reason, and the stop sequence that ended the output if one did."""
    if completion.finish_reason == "length":
        return "max_tokens", None
    if made_calls:
        return "tool_use", None
    if isinstance(completion.stop_reason, str):
        return "stop_sequence", completion.stop_reason
    return "end_turn", None
