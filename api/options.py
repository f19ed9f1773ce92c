"""What a server is configured with beyond its engine: the served name, access and CORS rules, limits."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServerOptions:
    served_model_name: str
    api_key: str | None = None
    allowed_origins: list[str] = field(default_factory=list)
    allow_credentials: bool = False
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    tool_call_parser: str | None = None  # the tool-call format; None: the one the chat template uses
    reasoning_parser: str | None = None  # split <think> ... </think> into reasoning_content
    grpc_address: str | None = None  # host:port of OIP over gRPC beside HTTP; None: no gRPC
    model_version: str = "1"  # OIP's model version, and the system_fingerprint of OpenAI responses (canaries)
    ui: bool = True  # the chat page at /

    def accepts_key(self, authorization: str, x_api_key: str) -> bool:
        """Whether a call carries the API key (always, where the server has none): as OpenAI clients send it
        (``Authorization: Bearer KEY``) or as Anthropic's (``x-api-key: KEY``), compared in constant time."""
        if self.api_key is None:
            return True
        return (secrets.compare_digest(authorization.encode(), f"Bearer {self.api_key}".encode())
                or secrets.compare_digest(x_api_key.encode(), self.api_key.encode()))
