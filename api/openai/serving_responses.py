"""POST /v1/responses: OpenAI's Responses API, stateless, on the chat pipeline.

The output is a list of items (reasoning, a message, function calls), built from the output's blocks;
a stream sends the same items as typed events in the order OpenAI sends them: ``response.created``,
``response.in_progress``, then per item ``output_item.added``, its content part, deltas, their
``.done`` events and ``output_item.done``, and last ``response.completed`` (or
``response.incomplete`` when max_output_tokens cut it).
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, AsyncIterator

from fastapi import Request
from sse_starlette import EventSourceResponse

from engine import AsyncLLMEngine, RequestOutput

from ..chat_pipeline import ChatFields, ChatPipeline, PreparedChat
from ..disconnect import unless_disconnected
from ..errors import APIError
from ..options import ServerOptions
from ..output_blocks import Block, BlockEvent
from ..serving import Serving, raise_if_aborted
from ..streaming import last_outputs, merge, typed_sse
from .protocol import ResponsesRequest
from .responses_input import check_stateless, responses_query

ITEM_PREFIX = {"reasoning": "rs", "text": "msg", "tool_call": "fc"}
PART_TYPE = {"reasoning": "reasoning_text", "text": "output_text"}
DELTA_EVENT = {"reasoning": "response.reasoning_text.delta", "text": "response.output_text.delta",
               "tool_call": "response.function_call_arguments.delta"}


class OpenAIServingResponses(Serving):
    def __init__(self, engine: AsyncLLMEngine, options: ServerOptions) -> None:
        super().__init__(engine, options)
        self.pipeline = ChatPipeline(engine, options)

    async def create(self, body: ResponsesRequest, raw: Request):
        self.check_model(body.model)
        check_stateless(body)
        if body.max_output_tokens is not None and body.max_output_tokens < 1:
            raise APIError(f"max_output_tokens must be >= 1, got {body.max_output_tokens}", param="max_output_tokens")
        prepared = await self.pipeline.prepare(responses_query(body), ChatFields(messages="input"))
        params = prepared.sampling_params(body.stream, temperature=body.temperature, top_p=body.top_p,
                                          top_k=body.top_k, seed=body.seed)
        response_id = self.new_id("resp", "_")
        stream = self.engine.generate(prepared.prompt, params, response_id, prompt_token_ids=prepared.token_ids)
        reply = ResponseBuilder(self, body, response_id)
        if body.stream:
            return EventSourceResponse(typed_sse(reply.events(stream, prepared), reply.error_event))
        (final,) = await unless_disconnected(raw, last_outputs([stream]))
        (completion,) = final.outputs
        raise_if_aborted(completion)
        return reply.response(final, [reply.item(block, self.new_id(ITEM_PREFIX[block.kind], "_"), done=True)
                                      for block in prepared.output_blocks(completion.text).blocks])


class ResponseBuilder:
    """One response object, whole or as the events of its stream."""

    def __init__(self, serving: Serving, body: ResponsesRequest, response_id: str) -> None:
        self.serving, self.body, self.id = serving, body, response_id
        self.created_at = serving.created()
        self.sequence = itertools.count()

    def response(self, final: RequestOutput | None, items: list[dict]) -> dict:
        """The response object: in progress (``final`` None) or finished."""
        body = self.body
        status, incomplete, usage = "in_progress", None, None
        if final is not None:
            completion = final.outputs[0]
            status = "incomplete" if completion.finish_reason == "length" else "completed"
            incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
            usage = self._usage(final, items)
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "error": None, "incomplete_details": incomplete, "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens, "model": self.serving.model_name, "output": items,
            "parallel_tool_calls": body.parallel_tool_calls, "previous_response_id": None,
            "reasoning": body.reasoning or {"effort": None, "summary": None}, "store": False,
            "temperature": body.temperature, "top_p": body.top_p, "text": body.text or {"format": {"type": "text"}},
            "tool_choice": body.tool_choice or "auto", "tools": body.tools or [], "truncation": "disabled",
            "usage": usage, "user": body.user, "metadata": body.metadata or {},
        }

    @staticmethod
    def item(block: Block, item_id: str, done: bool) -> dict:
        """The output item of a block (a fresh object each time: events are sent as they stand)."""
        status = "completed" if done else "in_progress"
        if block.kind == "tool_call":
            return {"type": "function_call", "id": item_id, "call_id": block.call_id, "name": block.name,
                    "arguments": block.text, "status": status}
        if block.kind == "reasoning":
            parts = [{"type": "reasoning_text", "text": block.text}] if done else []
            return {"type": "reasoning", "id": item_id, "summary": [], "content": parts, "status": status}
        parts = [_part(block)] if done else []
        return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": parts}

    def event(self, kind: str, **fields: Any) -> dict:
        return {"type": kind, "sequence_number": next(self.sequence), **fields}

    def error_event(self, error: APIError) -> dict:
        return self.event("error", code=error.code, message=error.message, param=error.param)

    async def events(self, stream: AsyncIterator[RequestOutput], prepared: PreparedChat) -> AsyncIterator[dict]:
        yield self.event("response.created", response=self.response(None, []))
        yield self.event("response.in_progress", response=self.response(None, []))
        blocks = prepared.output_blocks()
        items: list[dict] = []
        item_ids: list[str] = []
        final = None
        async with contextlib.aclosing(merge([stream])) as outputs:
            async for _, final in outputs:  # each output holds only what is new (DELTA)
                (completion,) = final.outputs
                raise_if_aborted(completion)
                for change in blocks.feed(completion.text, final=completion.finished):
                    if change.kind == "start":
                        item_ids.append(self.serving.new_id(ITEM_PREFIX[change.block.kind], "_"))
                    for event in self._item_events(change, item_ids[change.index]):
                        yield event
                    if change.kind == "stop":
                        items.append(self.item(change.block, item_ids[change.index], done=True))
        done = self.response(final, items)
        yield self.event("response.incomplete" if done["status"] == "incomplete" else "response.completed",
                         response=done)

    def _item_events(self, change: BlockEvent, item_id: str) -> list[dict]:
        block, where = change.block, {"output_index": change.index}
        has_part = block.kind != "tool_call"
        part_at = {"item_id": item_id, **where, "content_index": 0}
        if change.kind == "start":
            events = [self.event("response.output_item.added", **where, item=self.item(block, item_id, done=False))]
            if has_part:
                events.append(self.event("response.content_part.added", **part_at, part=_part(block)))
            return events
        if change.kind == "delta":
            fields = {**part_at, "delta": change.delta} if has_part else {"item_id": item_id, **where,
                                                                           "delta": change.delta}
            if block.kind == "text":
                fields["logprobs"] = []
            return [self.event(DELTA_EVENT[block.kind], **fields)]
        if block.kind == "tool_call":
            events = [self.event("response.function_call_arguments.done", item_id=item_id, **where,
                                 arguments=block.text, name=block.name)]
        else:
            text_done = {"text": block.text, **({"logprobs": []} if block.kind == "text" else {})}
            events = [self.event(f"response.{PART_TYPE[block.kind]}.done", **part_at, **text_done),
                      self.event("response.content_part.done", **part_at, part=_part(block))]
        return [*events, self.event("response.output_item.done", **where, item=self.item(block, item_id, done=True))]

    def _usage(self, final: RequestOutput, items: list[dict]) -> dict:
        prompt, generated = len(final.prompt_token_ids), final.metrics.num_generated_tokens
        thinking = "".join(part["text"] for item in items if item["type"] == "reasoning" for part in item["content"])
        reasoning = len(self.serving.tokenizer.encode(thinking, add_special_tokens=False)) if thinking else 0
        return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": final.num_cached_tokens},
                "output_tokens": generated, "output_tokens_details": {"reasoning_tokens": min(reasoning, generated)},
                "total_tokens": prompt + generated}


def _part(block: Block) -> dict:
    """A text block's content part as it stands (empty at its start)."""
    if block.kind == "reasoning":
        return {"type": "reasoning_text", "text": block.text}
    return {"type": "output_text", "text": block.text, "annotations": [], "logprobs": []}
