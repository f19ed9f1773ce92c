"""Thin FastAPI handlers for the OpenAI API; the work is in the serving classes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from engine import AsyncLLMEngine

from ..options import ServerOptions
from ..text import check_request_text
from .protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, ResponsesRequest, TokenizeRequest
from .serving_chat import OpenAIServingChat
from .serving_completion import OpenAIServingCompletion
from .serving_responses import OpenAIServingResponses
from .serving_tokenize import OpenAIServingTokenize


def build_router(engine: AsyncLLMEngine, options: ServerOptions) -> APIRouter:
    router = APIRouter(dependencies=[Depends(check_request_text)])
    completions = OpenAIServingCompletion(engine, options)
    chat = OpenAIServingChat(engine, options)
    responses = OpenAIServingResponses(engine, options)
    tokens = OpenAIServingTokenize(engine, options)

    @router.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [{
            "id": options.served_model_name, "object": "model", "created": completions.created(),
            "owned_by": "engine", "root": options.served_model_name, "max_model_len": engine.max_model_len,
            "version": options.model_version,
        }]}

    @router.post("/v1/completions")
    async def create_completion(body: CompletionRequest, raw: Request):
        return await completions.create(body, raw)

    @router.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest, raw: Request):
        return await chat.create(body, raw)

    @router.post("/v1/responses")
    async def create_response(body: ResponsesRequest, raw: Request):
        return await responses.create(body, raw)

    @router.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict:
        return tokens.tokenize(body)

    @router.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict:
        return tokens.detokenize(body)

    return router
