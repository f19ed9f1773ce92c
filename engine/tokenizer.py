"""Load a model's tokenizer and turn chat messages into prompt text."""

from __future__ import annotations

from typing import Any

from .loader import ModelSource


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.meta_path)


def apply_chat_template(tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                        continue_final_message: bool = False, **template_kwargs: Any) -> str:
    """Render with the model's template; ``continue_final_message`` leaves the last message open."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template; use generate() with a plain prompt")
    if add_generation_prompt and continue_final_message:
        raise ValueError("add_generation_prompt and continue_final_message cannot both be true")
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message, **template_kwargs,
    )
