"""POST /v1/completions: one or many prompts, n choices each, streamed or not."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from fastapi import Request
from sse_starlette import EventSourceResponse

from engine import CompletionOutput, RequestOutput

from ..disconnect import unless_disconnected
from ..errors import APIError
from ..serving import raise_if_aborted
from ..streaming import last_outputs, merge
from .protocol import CompletionRequest
from .serving_base import OpenAIServing, sse_events, usage


class OpenAIServingCompletion(OpenAIServing):
    def _prompts(self, prompt) -> list[tuple[str | None, list[int]]]:
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise APIError("prompt must not be empty", param="prompt")
        if all(isinstance(p, int) for p in prompt):
            prompt = [prompt]
        return [(p, self.tokenizer.encode(p)) if isinstance(p, str) else (None, list(p)) for p in prompt]

    async def create(self, body: CompletionRequest, raw: Request):
        self.check_common(body)
        if body.suffix is not None:
            raise APIError("suffix is not supported", param="suffix")
        if body.best_of is not None and body.best_of != body.n:
            raise APIError("best_of other than n is not supported", param="best_of")
        if body.max_tokens is not None and body.max_tokens < 1:
            raise APIError(f"max_tokens must be >= 1, got {body.max_tokens}", param="max_tokens")
        prompts = self._prompts(body.prompt)
        for _, token_ids in prompts:
            self.check_limits(len(token_ids), body.n, body.max_tokens, "prompt")
        max_tokens = body.max_tokens or 16
        prompt_logprobs = body.logprobs if body.echo and body.logprobs is not None else None
        params = self.sampling_params(body, max_tokens, body.logprobs, "logprobs", prompt_logprobs,
                                      await self.constraint(body))
        request_id = self.new_id("cmpl")
        streams = [
            self.engine.generate(text, params, f"{request_id}-{i}", prompt_token_ids=ids)
            for i, (text, ids) in enumerate(prompts)
        ]
        if body.stream:
            return EventSourceResponse(sse_events(self._stream(body, request_id, streams)))
        finals = await unless_disconnected(raw, last_outputs(streams))
        return self._response(body, request_id, finals)

    def _response(self, body: CompletionRequest, request_id: str, finals: list[RequestOutput]) -> dict:
        choices = []
        for prompt_index, final in enumerate(finals):
            for completion in final.outputs:
                raise_if_aborted(completion)
                text = completion.text
                if body.echo:
                    text = self._prompt_text(final) + text
                choices.append({
                    "index": prompt_index * body.n + completion.index,
                    "text": text,
                    "logprobs": self._logprobs(body, final, completion, 0, 0) if body.logprobs is not None else None,
                    "finish_reason": completion.finish_reason,
                    "stop_reason": completion.stop_reason,
                })
        return {"id": request_id, "object": "text_completion", "created": self.created(), "model": self.model_name,
                "system_fingerprint": self.options.model_version, "choices": choices, "usage": usage(finals)}

    async def _stream(self, body: CompletionRequest, request_id: str, streams) -> AsyncIterator[dict]:
        """One chunk per choice per engine output; the outputs hold only what is new (DELTA)."""
        created = self.created()
        sent_chars: dict[int, int] = {}  # per choice: text sent so far, for logprobs' text offsets
        latest: dict[int, RequestOutput] = {}  # per prompt: for the usage chunk (counts ride in its metrics)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        async with contextlib.aclosing(merge(streams)) as outputs:
            async for prompt_index, output in outputs:
                latest[prompt_index] = output
                for completion in output.outputs:
                    raise_if_aborted(completion)
                    index = prompt_index * body.n + completion.index
                    text = completion.text
                    if index not in sent_chars and body.echo:
                        text = self._prompt_text(output) + text
                    logprobs = None
                    if body.logprobs is not None:
                        logprobs = self._logprobs(body, output, completion, 0, sent_chars.get(index, 0), echo=False)
                    sent_chars[index] = sent_chars.get(index, 0) + len(completion.text)
                    chunk = {"id": request_id, "object": "text_completion", "created": created,
                             "model": self.model_name, "system_fingerprint": self.options.model_version,
                             "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                          "finish_reason": completion.finish_reason,
                                          "stop_reason": completion.stop_reason}]}
                    if include_usage:
                        chunk["usage"] = None
                    yield chunk
        if include_usage:
            yield {"id": request_id, "object": "text_completion", "created": created, "model": self.model_name,
                   "choices": [], "usage": usage([latest[i] for i in sorted(latest)])}

    def _prompt_text(self, output: RequestOutput) -> str:
        return output.prompt if output.prompt is not None else self.tokenizer.decode(output.prompt_token_ids)

    def _logprobs(self, body: CompletionRequest, output: RequestOutput, completion: CompletionOutput,
                  first_token: int, text_offset: int, echo: bool | None = None) -> dict:
        """OpenAI's legacy logprobs object for tokens ``first_token..`` of a choice (plus the prompt with echo)."""
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        positions = []
        if (body.echo if echo is None else echo) and output.prompt_logprobs is not None:
            positions += list(zip(output.prompt_token_ids, output.prompt_logprobs))
        positions += list(zip(completion.token_ids[first_token:], (completion.logprobs or [])[first_token:]))
        offset = text_offset
        for token_id, entry in positions:
            text = self.token_text(token_id)
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            if entry is None:  # the first prompt token has no logprob
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            token_logprobs.append(self.logprob_value(entry[token_id].logprob))
            best = sorted(entry.items(), key=lambda item: item[1].rank)
            top = {lp.decoded_token: self.logprob_value(lp.logprob) for tid, lp in best
                   if lp.rank <= body.logprobs or tid == token_id}
            top_logprobs.append(top)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": offsets}
