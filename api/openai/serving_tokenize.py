"""POST /tokenize and /detokenize, in vLLM's shapes: a prompt or chat messages to token ids (as the
server would feed them to the model), and token ids back to text."""

from __future__ import annotations

from ..errors import APIError
from .protocol import DetokenizeRequest, TokenizeRequest
from .serving_base import OpenAIServing
from .serving_chat import OpenAIServingChat


class OpenAIServingTokenize(OpenAIServing):
    def tokenize(self, body: TokenizeRequest) -> dict:
        self.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError("give exactly one of prompt and messages", param="prompt")
        if body.prompt is not None:
            tokens = self.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        else:
            messages = [OpenAIServingChat.message(i, m) for i, m in enumerate(body.messages)]
            try:
                _, tokens = self.engine.render_chat(
                    messages, add_generation_prompt=body.add_generation_prompt,
                    continue_final_message=body.continue_final_message, **(body.chat_template_kwargs or {}))
            except ValueError as err:  # messages the chat template cannot render: the request's fault
                raise APIError(str(err), param="messages") from None
        return {"count": len(tokens), "max_model_len": self.engine.max_model_len, "tokens": tokens,
                "token_strs": [self.token_text(t) for t in tokens] if body.return_token_strs else None}

    def detokenize(self, body: DetokenizeRequest) -> dict:
        self.check_model(body.model)
        vocab = len(self.tokenizer)
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(f"tokens holds {bad[0]}, outside the vocabulary [0, {vocab})", param="tokens")
        return {"prompt": self.tokenizer.decode(body.tokens)}
