"""Load a model's tokenizer and turn chat messages into prompt text."""

from __future__ import annotations

from typing import Any

from .loader import ModelSource


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    if source.is_gguf:
        from .loader.gguf import load_gguf_tokenizer

        return load_gguf_tokenizer(source.path)
    return AutoTokenizer.from_pretrained(source.path)


def apply_chat_template(tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template; use generate() with a plain prompt")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
