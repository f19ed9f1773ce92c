"""Load a model's tokenizer and turn chat messages into prompt text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.model.loader import ModelSource


# tokenizer_config.json's names for transformers' generic fast tokenizer (4.x, 5.x)
_GENERIC_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def load_tokenizer(source: ModelSource, chat_template: str | None = None):
    """The model's tokenizer; ``chat_template`` (Jinja text or a file holding it) replaces its template,
    as for a model whose own template does not render tools.

    Where the folder names the generic fast tokenizer, that class is loaded directly: it is what
    ``AutoTokenizer`` picks, without importing the model configs (a second of imports)."""
    import transformers

    settings = source.meta_path / "tokenizer_config.json"
    name = json.loads(settings.read_text()).get("tokenizer_class") if settings.is_file() else None
    loader = getattr(transformers, name) if name in _GENERIC_CLASSES else transformers.AutoTokenizer
    tokenizer = loader.from_pretrained(source.meta_path)
    if chat_template is not None:
        tokenizer.chat_template = read_chat_template(chat_template)
    return tokenizer


def read_chat_template(template: str) -> str:
    if "{{" in template or "{%" in template:
        return template
    path = Path(template).expanduser()
    if not path.is_file():
        raise ValueError(f"chat_template must be a Jinja template or a file holding one; {template!r} is neither")
    return path.read_text()


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
