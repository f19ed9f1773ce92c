"""Request bodies of Anthropic's Messages API. Content blocks and tools stay plain JSON here:
api/anthropic/messages_input.py checks them one by one, naming the block that is wrong."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "assistant"]
    content: Union[str, list[Any]]


class CountTokensRequest(BaseModel):
    """POST /v1/messages/count_tokens: what a message would be sent with, less the sampling fields."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: Optional[Union[str, list[Any]]] = None
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Any] = None
    thinking: Optional[dict[str, Any]] = None
    output_config: Optional[dict[str, Any]] = None


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages. ``max_tokens`` is required, as in Anthropic's API."""

    max_tokens: int
    stop_sequences: Optional[list[str]] = None
    stream: bool = False
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    metadata: Optional[dict[str, Any]] = None
