"""POST /v1/chat/completions: messages through the model's chat template, n choices, streamed or not."""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any, AsyncIterator, Callable

from fastapi import Request
from sse_starlette import EventSourceResponse

from engine import CompletionOutput, RequestOutput, StructuredOutputsParams

from ..disconnect import unless_disconnected
from ..errors import APIError
from ..reasoning import END as REASONING_END
from ..reasoning import ReasoningParser, prompt_leaves_thinking_open
from ..streaming import last_outputs, merge
from ..tool_parsers import PARSERS, ToolParser, parser_for_template
from .chat_output import ChatOutput
from .protocol import ChatCompletionRequest, ChatMessage
from .serving_base import OpenAIServing, raise_if_aborted, sse_events, usage


class OpenAIServingChat(OpenAIServing):
    def _messages(self, body: ChatCompletionRequest) -> list[dict[str, Any]]:
        return [self.message(i, m) for i, m in enumerate(body.messages)]

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

    def _tool_plan(self, body: ChatCompletionRequest) -> tuple[list[dict] | None, ToolParser | None,
                                                              StructuredOutputsParams | None]:
        """The tools the template shows, the parser of the output's calls, and the grammar forcing calls
        (tool_choice "required" or a named function)."""
        if body.functions:
            raise APIError("functions is deprecated and not supported; use tools", param="functions")
        tools = _checked_tools(body.tools)
        choice = body.tool_choice if body.tool_choice is not None else ("auto" if tools else "none")
        if choice == "none":
            return None, None, None
        if not tools:
            raise APIError("tool_choice needs tools", param="tool_choice")
        parser = PARSERS[self.options.tool_call_parser or parser_for_template(self.tokenizer.chat_template)]()
        if choice == "auto":
            return tools, parser, None
        if choice == "required":
            return tools, parser, parser.forced_grammar(tools, parallel=body.parallel_tool_calls)
        function = choice.get("function") if isinstance(choice, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        chosen = [tool for tool in tools if tool["function"]["name"] == name]
        if not chosen:
            raise APIError(f"tool_choice must be 'none', 'auto', 'required' or {{\"type\": \"function\", "
                           f"\"function\": {{\"name\": ...}}}} naming one of the tools, got {choice!r}",
                           param="tool_choice")
        return tools, parser, parser.forced_grammar(chosen, parallel=False)

    def _output_parser(self, prompt: str, tools: ToolParser | None) -> ChatOutput:
        reasoning = ReasoningParser(prompt) if self.options.reasoning_parser else None
        return ChatOutput(reasoning, tools)

    async def create(self, body: ChatCompletionRequest, raw: Request):
        self.check_common(body)
        given_max = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        if given_max is not None and given_max < 1:
            raise APIError(f"{field} must be >= 1, got {given_max}", param=field)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError("top_logprobs requires logprobs: true", param="top_logprobs")
        tools, tool_parser, forced = self._tool_plan(body)
        template_kwargs = {**(body.chat_template_kwargs or {}), **({"tools": tools} if tools else {})}
        try:
            prompt, token_ids = self.engine.render_chat(
                self._messages(body), add_generation_prompt=body.add_generation_prompt,
                continue_final_message=body.continue_final_message, **template_kwargs,
            )
        except APIError:
            raise
        except Exception as err:  # a template that cannot render these messages is the request's fault
            raise APIError(f"the chat template could not render the messages: {err}", param="messages") from None
        # without max_tokens, the completion may fill the context, and needs room for one token
        self.check_limits(len(token_ids), body.n, 1 if given_max is None else given_max, "messages")
        max_tokens = given_max if given_max is not None else self.engine.max_model_len - len(token_ids)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        # where the prompt leaves a <think> open, the thinking stays free and the constraint starts after it;
        # otherwise the constraint holds from the first token (a model that would open <think> cannot)
        thinks = self.options.reasoning_parser and prompt_leaves_thinking_open(prompt)
        constraint = await self.constraint(body, forced, begin_after=REASONING_END if thinks else None)
        params = self.sampling_params(body, max_tokens, logprobs, "top_logprobs", constraint=constraint)
        request_id = self.new_id("chatcmpl")
        stream = self.engine.generate(prompt, params, request_id, prompt_token_ids=token_ids)
        new_output = functools.partial(self._output_parser, prompt, tool_parser)
        if body.stream:
            return EventSourceResponse(sse_events(self._stream(body, request_id, stream, new_output)))
        (final,) = await unless_disconnected(raw, last_outputs([stream]))
        return self._response(body, request_id, final, new_output)

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
                "system_fingerprint": None, "choices": choices, "usage": usage([final])}

    async def _stream(self, body: ChatCompletionRequest, request_id: str, stream,
                      new_output: Callable[[], ChatOutput]) -> AsyncIterator[dict]:
        created = self.created()
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        parsers: dict[int, ChatOutput] = {}  # per choice, from its first output (its role chunk then went out)
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
    for index, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str) or not function["name"]:
            raise APIError('each tool must be {"type": "function", "function": {"name": ..., ...}}',
                           param=f"tools.{index}")
        if not isinstance(function.get("parameters", {}), dict):
            raise APIError("a function's parameters must be a JSON schema (an object)",
                           param=f"tools.{index}.function.parameters")
    return tools or None


def _template_tool_call(call: Any, field: str) -> dict:
    """An assistant message's tool call as chat templates read it: arguments as an object, not JSON text."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise APIError('a tool call must be {"id": ..., "type": "function", "function": {"name": ..., '
                       '"arguments": ...}}', param=field)
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            raise APIError("a tool call's arguments must be JSON", param=f"{field}.function.arguments") from None
    return {"id": call.get("id"), "type": "function", "function": {"name": function["name"], "arguments": arguments}}
