"""A model's tokenizer: the Rust ``tokenizers`` model with the special tokens and chat template of
its folder's ``tokenizer_config.json``.

transformers' tokenizer classes wrap the same Rust model; importing them costs a start ~0.7 s and
gives the engine nothing more. A folder whose ``tokenizer_class`` is a specific class (which may
rewrite the model as it loads, e.g. a Llama tokenizer's BOS) or that has no ``tokenizer.json`` is
loaded by transformers once and its converted Rust model used the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tokenizers

from engine.model.loader import ModelSource

from .chat_template import render_chat

# tokenizer_config.json's names for transformers' generic fast tokenizer (4.x, 5.x): tokenizer.json as is
_GENERIC_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
# transformers' clean_up_tokenization: the spaces English detokenizers of old left before punctuation
_CLEAN_UPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
              (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class Tokenizer:
    """Text <-> token ids, the vocabulary's pieces, and the chat template, in the names of
    transformers' tokenizers (``encode``, ``decode``, ``convert_ids_to_tokens``, ``apply_chat_template``)."""

    def __init__(self, backend: tokenizers.Tokenizer, special_tokens: dict[str, str | None],
                 chat_template: str | None, clean_up_tokenization_spaces: bool = False) -> None:
        self.backend_tokenizer = backend
        self.chat_template = chat_template
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        for name in _SPECIAL_NAMES:
            token = special_tokens.get(name)
            setattr(self, name, token)
            setattr(self, f"{name}_id", backend.token_to_id(token) if token is not None else None)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in _SPECIAL_NAMES if getattr(self, name) is not None}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        text = self.backend_tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces:
            for spaced, joined in _CLEAN_UPS:
                text = text.replace(spaced, joined)
        return text

    def convert_ids_to_tokens(self, token_ids: int | list[int]) -> str | None | list[str | None]:
        if isinstance(token_ids, int):
            return self.backend_tokenizer.id_to_token(token_ids)
        return [self.backend_tokenizer.id_to_token(token_id) for token_id in token_ids]

    def apply_chat_template(self, conversation: list[dict[str, Any]], tokenize: bool = True,
                            chat_template: str | None = None, **kwargs: Any):
        """The template's text for ``conversation`` (``tokenize=False``) or its tokens; ``chat_template``
        instead of the model's; keyword arguments (``add_generation_prompt``, ``tools``,
        ``enable_thinking``...) reach the template."""
        template = chat_template or self.chat_template
        if not template:
            raise ValueError("this model's tokenizer has no chat template; use generate() with a plain prompt")
        text = render_chat(template, conversation, **{**self.special_tokens_map, **kwargs})
        return self.encode(text, add_special_tokens=False) if tokenize else text


def load_tokenizer(source: ModelSource, chat_template: str | None = None) -> Tokenizer:
    """The model's tokenizer; ``chat_template`` (Jinja text or a file holding it) replaces its template,
    as for a model whose own template does not render tools."""
    folder = source.meta_path
    settings = _json(folder / "tokenizer_config.json")
    if (folder / "tokenizer.json").is_file() and settings.get("tokenizer_class") in _GENERIC_CLASSES:
        backend = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        special = {**_json(folder / "special_tokens_map.json"), **settings}
        special = {name: _content(special.get(name)) for name in _SPECIAL_NAMES}
        template = _folder_template(folder, settings)
        _add_config_tokens(backend, settings)
    else:
        backend, special, template = _converted_by_transformers(folder)
    if chat_template is not None:
        template = read_chat_template(chat_template)
    backend.no_padding()  # a tokenizer.json may carry training-time padding or truncation
    backend.no_truncation()
    return Tokenizer(backend, special, template, bool(settings.get("clean_up_tokenization_spaces", False)))


def _converted_by_transformers(folder: Path) -> tuple[tokenizers.Tokenizer, dict[str, str | None], str | None]:
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(folder)
    if not loaded.is_fast:
        raise ValueError(f"{folder}: no fast tokenizer can be built for {type(loaded).__name__}")
    special = {name: _content(getattr(loaded, name, None)) for name in _SPECIAL_NAMES}
    template = loaded.chat_template if isinstance(loaded.chat_template, str) else None
    return loaded.backend_tokenizer, special, template


def _folder_template(folder: Path, settings: dict) -> str | None:
    """chat_template.jinja (transformers 5) or tokenizer_config.json's template; of a list of named
    templates, the default."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    template = settings.get("chat_template")
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _add_config_tokens(backend: tokenizers.Tokenizer, settings: dict) -> None:
    """Added tokens that tokenizer_config.json lists past the end of tokenizer.json (older exports),
    each where its id says."""
    listed = settings.get("added_tokens_decoder", {})
    for token_id in sorted(int(key) for key in listed if str(key).isdigit()):
        entry = listed[str(token_id)]
        if not isinstance(entry, dict) or token_id != backend.get_vocab_size(with_added_tokens=True):
            continue
        special = bool(entry.get("special"))
        token = tokenizers.AddedToken(str(entry.get("content", "")), special=special, normalized=False)
        (backend.add_special_tokens if special else backend.add_tokens)([token])


def _content(token: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an object with its content."""
    if isinstance(token, dict):
        token = token.get("content")
    return str(token) if token is not None else None


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_chat_template(template: str) -> str:
    if "{{" in template or "{%" in template:
        return template
    path = Path(template).expanduser()
    if not path.is_file():
        raise ValueError(f"chat_template must be a Jinja template or a file holding one; {template!r} is neither")
    return path.read_text()
