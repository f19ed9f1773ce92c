"""POST /v1/chat/completions: messages through the model's chat template, n choices, streamed or not."""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

from fastapi import Request
from sse_starlette import EventSourceResponse

from engine import CompletionOutput, RequestOutput

from ..disconnect import unless_disconnected
from ..errors import APIError
from ..streaming import last_outputs, merge
from .protocol import ChatCompletionRequest, ChatMessage
from .serving_base import OpenAIServing, raise_if_aborted, sse_events, usage


class OpenAIServingChat(OpenAIServing):
    def _messages(self, body: ChatCompletionRequest) -> list[dict[str, Any]]:
        if body.tools or body.functions or body.tool_choice not in (None, "none"):
            raise APIError("tools and function calling are not supported", param="tools")
        return [self._message(i, m) for i, m in enumerate(body.messages)]

    @staticmethod
    def _message(index: int, message: ChatMessage) -> dict[str, Any]:
        if message.tool_calls:
            raise APIError("messages with tool_calls are not supported", param=f"messages.{index}.tool_calls")
        content = message.content
        if isinstance(content, list):
            unsupported = [part.type for part in content if part.type != "text"]
            if unsupported:
                raise APIError(f"content parts of type {unsupported[0]!r} are not supported (only 'text')",
                               param=f"messages.{index}.content")
            content = "\n".join(part.text or "" for part in content)
        return {"role": message.role, "content": content or ""}

    async def create(self, body: ChatCompletionRequest, raw: Request):
        self.check_common(body)
        given_max = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        if given_max is not None and given_max < 1:
            raise APIError(f"{field} must be >= 1, got {given_max}", param=field)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError("top_logprobs requires logprobs: true", param="top_logprobs")
        try:
            prompt, token_ids = self.engine.render_chat(
                self._messages(body), add_generation_prompt=body.add_generation_prompt,
                continue_final_message=body.continue_final_message, **(body.chat_template_kwargs or {}),
            )
        except APIError:
            raise
        except Exception as err:  # a template that cannot render these messages is the request's fault
            raise APIError(f"the chat template could not render the messages: {err}", param="messages") from None
        # without max_tokens, the completion may fill the context, and needs room for one token
        self.check_limits(len(token_ids), body.n, 1 if given_max is None else given_max, "messages")
        max_tokens = given_max if given_max is not None else self.engine.max_model_len - len(token_ids)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        params = await self.sampling_params(body, max_tokens, logprobs, "top_logprobs")
        request_id = self.new_id("chatcmpl")
        stream = self.engine.generate(prompt, params, request_id, prompt_token_ids=token_ids)
        if body.stream:
            return EventSourceResponse(sse_events(self._stream(body, request_id, stream)))
        (final,) = await unless_disconnected(raw, last_outputs([stream]))
        return self._response(body, request_id, final)

    def _response(self, body: ChatCompletionRequest, request_id: str, final: RequestOutput) -> dict:
        choices = []
        for completion in final.outputs:
            raise_if_aborted(completion)
            choices.append({
                "index": completion.index,
                "message": {"role": "assistant", "content": completion.text},
                "logprobs": self._logprobs(body, completion) if body.logprobs else None,
                "finish_reason": completion.finish_reason,
                "stop_reason": completion.stop_reason,
            })
        return {"id": request_id, "object": "chat.completion", "created": self.created(), "model": self.model_name,
                "system_fingerprint": None, "choices": choices, "usage": usage([final])}

    async def _stream(self, body: ChatCompletionRequest, request_id: str, stream) -> AsyncIterator[dict]:
        created = self.created()
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        started: set[int] = set()  # choices whose role chunk went out
        final = None

        def chunk(index: int, delta: dict, logprobs, finish_reason, stop_reason=None) -> dict:
            out = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                   "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                "finish_reason": finish_reason, "stop_reason": stop_reason}]}
            if include_usage:
                out["usage"] = None
            return out

        async with contextlib.aclosing(merge([stream])) as outputs:
            async for _, final in outputs:  # each output holds only what is new (DELTA)
                for completion in final.outputs:
                    index = completion.index
                    raise_if_aborted(completion)
                    if index not in started:
                        started.add(index)
                        yield chunk(index, {"role": "assistant", "content": ""}, None, None)
                    logprobs = self._logprobs(body, completion) if body.logprobs else None
                    if completion.text or (logprobs and logprobs["content"]):
                        yield chunk(index, {"content": completion.text}, logprobs, None)
                    if completion.finished:
                        yield chunk(index, {}, None, completion.finish_reason, completion.stop_reason)
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
