"""Thin FastAPI handlers for Anthropic's Messages API; the work is in the serving class."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from engine import AsyncLLMEngine

from ..options import ServerOptions
from ..text import check_request_text
from .protocol import CountTokensRequest, MessagesRequest
from .serving_messages import AnthropicServingMessages


def build_router(engine: AsyncLLMEngine, options: ServerOptions) -> APIRouter:
    router = APIRouter(dependencies=[Depends(check_request_text)])
    messages = AnthropicServingMessages(engine, options)

    @router.post("/v1/messages")
    async def create_message(body: MessagesRequest, raw: Request):
        return await messages.create(body, raw)

    @router.post("/v1/messages/count_tokens")
    async def count_tokens(body: CountTokensRequest) -> dict:
        return messages.count_tokens(body)

    return router
