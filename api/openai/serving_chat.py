"""POST /v1/chat/completions: messages through the model's chat template, n choices, streamed or not."""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator, Callable

from fastapi import Request
from sse_starlette import EventSourceResponse

from engine import AsyncLLMEngine, CompletionOutput, RequestOutput

from ..chat_output import ChatOutput
from ..chat_pipeline import ChatPipeline, ChatQuery, function_tool, template_tool_call
from ..disconnect import unless_disconnected
from ..errors import APIError
from ..options import ServerOptions
from ..serving import raise_if_aborted
from ..streaming import last_outputs, merge
from ..structured import FIELDS as CONSTRAINT_FIELDS
from ..structured import structured_outputs_from
from .protocol import ChatCompletionRequest, ChatMessage
from .serving_base import OpenAIServing, sse_events, usage


class OpenAIServingChat(OpenAIServing):
    def __init__(self, engine: AsyncLLMEngine, options: ServerOptions) -> None:
        super().__init__(engine, options)
        self.pipeline = ChatPipeline(engine, options)

    @staticmethod
    def message(index: int, message: ChatMessage) -> dict[str, Any]:
        """A request message as chat templates read it."""
        content = message.content
        if isinstance(content, list):
            unsupported = [part.type for part in content if part.type != "text"]
            if unsupported:
                raise APIError(f"content parts of type {unsupported[0]!r} are not supported (only 'text')",
                               param=f"messages.{index}.content")
            content = "\n".join(part.text or "" for part in content)
        rendered: dict[str, Any] = {"role": message.role, "content": content or ""}
        if message.tool_calls:
            rendered["tool_calls"] = [_template_tool_call(call, f"messages.{index}.tool_calls.{i}")
                                      for i, call in enumerate(message.tool_calls)]
        if message.role == "tool":
            rendered["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            rendered["name"] = message.name
        return rendered

    def _query(self, body: ChatCompletionRequest, max_tokens: int | None) -> ChatQuery:
        if body.functions:
            raise APIError("functions is deprecated and not supported; use tools", param="functions")
        choice, name = body.tool_choice, None
        if isinstance(choice, dict):
            function = choice.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if choice.get("type") != "function" or not isinstance(name, str):
                raise APIError(f"tool_choice must be 'none', 'auto', 'required' or {{\"type\": \"function\", "
                               f"\"function\": {{\"name\": ...}}}}, got {choice!r}", param="tool_choice")
            choice = "function"
        elif choice not in (None, "none", "auto", "required"):
            raise APIError(f"tool_choice must be 'none', 'auto', 'required' or an object naming a function, "
                           f"got {choice!r}", param="tool_choice")
        return ChatQuery(
            messages=[self.message(i, m) for i, m in enumerate(body.messages)], tools=_checked_tools(body.tools),
            tool_choice=choice, tool_name=name, parallel_tool_calls=body.parallel_tool_calls,
            constraint=structured_outputs_from(body.model_dump(include=set(CONSTRAINT_FIELDS))),
            max_tokens=max_tokens, n=body.n, template_kwargs=body.chat_template_kwargs or {},
            add_generation_prompt=body.add_generation_prompt, continue_final_message=body.continue_final_message)

    async def create(self, body: ChatCompletionRequest, raw: Request):
        self.check_common(body)
        given_max = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        if given_max is not None and given_max < 1:
            raise APIError(f"{field} must be >= 1, got {given_max}", param=field)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError("top_logprobs requires logprobs: true", param="top_logprobs")
        prepared = await self.pipeline.prepare(self._query(body, given_max))
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        params = self.sampling_params(body, prepared.max_tokens, logprobs, "top_logprobs",
                                      constraint=prepared.constraint)
        request_id = self.new_id("chatcmpl")
        stream = self.engine.generate(prepared.prompt, params, request_id, prompt_token_ids=prepared.token_ids)
        if body.stream:
            return EventSourceResponse(sse_events(self._stream(body, request_id, stream, prepared.new_output)))
        (final,) = await unless_disconnected(raw, last_outputs([stream]))
        return self._response(body, request_id, final, prepared.new_output)

    def _response(self, body: ChatCompletionRequest, request_id: str, final: RequestOutput,
                  new_output: Callable[[], ChatOutput]) -> dict:
        choices = []
        for completion in final.outputs:
            raise_if_aborted(completion)
            output = new_output()
            choices.append({
                "index": completion.index,
                "message": output.message(completion.text),
                "logprobs": self._logprobs(body, completion) if body.logprobs else None,
                "finish_reason": output.finish_reason(completion.finish_reason),
                "stop_reason": completion.stop_reason,
            })
        return {"id": request_id, "object": "chat.completion", "created": self.created(), "model": self.model_name,
                "system_fingerprint": self.options.model_version, "choices": choices, "usage": usage([final])}

    async def _stream(self, body: ChatCompletionRequest, request_id: str, stream,
                      new_output: Callable[[], ChatOutput]) -> AsyncIterator[dict]:
        created = self.created()
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        parsers: dict[int, ChatOutput] = {}  # per choice, from its first output (its role chunk then went out)
        final = None

        def chunk(index: int, delta: dict, logprobs, finish_reason, stop_reason=None) -> dict:
            out = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                   "system_fingerprint": self.options.model_version, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                "finish_reason": finish_reason, "stop_reason": stop_reason}]}
            if include_usage:
                out["usage"] = None
            return out

        async with contextlib.aclosing(merge([stream])) as outputs:
            async for _, final in outputs:  # each output holds only what is new (DELTA)
                for completion in final.outputs:
                    index = completion.index
                    raise_if_aborted(completion)
                    if index not in parsers:
                        parsers[index] = new_output()
                        yield chunk(index, {"role": "assistant", "content": ""}, None, None)
                    logprobs = self._logprobs(body, completion) if body.logprobs else None
                    pieces = parsers[index].feed(completion.text, final=completion.finished)
                    if not pieces and logprobs and logprobs["content"]:
                        pieces = [{"content": ""}]
                    for number, piece in enumerate(pieces):  # the step's logprobs ride on its first piece
                        yield chunk(index, piece, logprobs if number == 0 else None, None)
                    if completion.finished:
                        reason = parsers[index].finish_reason(completion.finish_reason)
                        yield chunk(index, {}, None, reason, completion.stop_reason)
        if include_usage and final is not None:
            yield {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                   "choices": [], "usage": usage([final])}

    def _logprobs(self, body: ChatCompletionRequest, completion: CompletionOutput) -> dict:
        top_n = body.top_logprobs or 0
        content = []
        for token_id, entry in zip(completion.token_ids, completion.logprobs or []):
            chosen = entry[token_id]
            best = sorted((lp for lp in entry.values() if lp.rank <= top_n), key=lambda lp: lp.rank)[:top_n]
            content.append({
                "token": chosen.decoded_token, "logprob": self.logprob_value(chosen.logprob),
                "bytes": list(chosen.token_bytes),
                "top_logprobs": [{"token": lp.decoded_token, "logprob": self.logprob_value(lp.logprob),
                                  "bytes": list(lp.token_bytes)} for lp in best],
            })
        return {"content": content}


def _checked_tools(tools: list[Any] | None) -> list[dict] | None:
    """OpenAI tools: ``{"type": "function", "function": {"name": ..., "parameters": {...}}}`` each."""
    checked = []
    for index, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise APIError('each tool must be {"type": "function", "function": {"name": ..., ...}}',
                           param=f"tools.{index}")
        checked.append(function_tool(function.get("name"), function.get("parameters"), function.get("description"),
                                     f"tools.{index}.function", "parameters"))
    return checked or None


def _template_tool_call(call: Any, field: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise APIError('a tool call must be {"id": ..., "type": "function", "function": {"name": ..., '
                       '"arguments": ...}}', param=field)
    return template_tool_call(call.get("id"), function.get("name"), function.get("arguments", {}),
                              f"{field}.function")
