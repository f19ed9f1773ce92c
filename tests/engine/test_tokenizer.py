"""Our tokenizer (the Rust model and tokenizer_config.json, without transformers' classes) against
transformers' AutoTokenizer on the same folder: the same ids, text, pieces, special tokens and
rendered chats. And the chat template sandbox: a template cannot reach Python's internals."""

from __future__ import annotations

import sys
from pathlib import Path

import jinja2
import pytest
from transformers import AutoTokenizer

from engine.model.loader import ModelSource
from engine.processing.tokenizer import load_tokenizer

QWEN_TEMPLATE = (Path(__file__).parent.parent / "fixtures" / "qwen2.5_chat_template.jinja").read_text()
TEXTS = ["Hello world", "12345 and 2026", "<|im_start|>user\nhi<|im_end|>", "naïve café 日本語 🎉", "  two  spaces\n\n",
         "don't I'll they've", "<|endoftext|> after"]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CHATS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!", "tool_calls": None}, {"role": "user", "content": "Ünïcode ✓"}],
    [{"role": "user", "content": "Weather in Paris?"},
     {"role": "assistant", "content": None,
      "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
     {"role": "tool", "content": "{\"temp\": 21}"}],
]


@pytest.fixture(scope="module")
def folder(tokenizer_folder) -> Path:
    return tokenizer_folder


@pytest.fixture(scope="module")
def pair(folder):
    return load_tokenizer(ModelSource(folder, False, "m", folder)), AutoTokenizer.from_pretrained(folder)


def test_loading_imports_no_transformers(folder):
    """A start-up cost we removed: checked in a fresh interpreter, where nothing imported it before."""
    import subprocess

    code = ("import sys; from engine.model.loader import ModelSource; from engine.processing.tokenizer import load_tokenizer; "
            "from pathlib import Path; "
            f"load_tokenizer(ModelSource(Path({str(folder)!r}), False, 'm', Path({str(folder)!r}))); "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "False"


def test_ids_text_and_pieces_equal_transformers(pair):
    ours, ref = pair
    for text in TEXTS:
        for add_special_tokens in (True, False):
            assert ours.encode(text, add_special_tokens) == ref.encode(text, add_special_tokens=add_special_tokens)
        ids = ref.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    vocab = list(range(len(ref)))
    assert len(ours) == len(ref) and ours.convert_ids_to_tokens(vocab) == ref.convert_ids_to_tokens(vocab)
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert (getattr(ours, name), getattr(ours, f"{name}_id")) == (getattr(ref, name), getattr(ref, f"{name}_id"))


@pytest.mark.parametrize("template", ["model", "qwen2.5"])
def test_chats_render_as_transformers_renders_them(pair, template):
    ours, ref = pair
    text = None if template == "model" else QWEN_TEMPLATE
    for chat in CHATS if template == "qwen2.5" else CHATS[:2]:  # SmolLM2's template has no tool calls
        for kwargs in ({"add_generation_prompt": True}, {"add_generation_prompt": False}, {"tools": [WEATHER]}):
            expected = ref.apply_chat_template(chat, tokenize=False, chat_template=text, **kwargs)
            assert ours_render(ours, chat, text, **kwargs) == expected
    opened = CHATS[1][:3]
    expected = ref.apply_chat_template(opened, tokenize=False, chat_template=text, continue_final_message=True)
    assert ours_render(ours, opened, text, continue_final_message=True) == expected
    assert expected.endswith("Hello!")


def ours_render(tokenizer, chat, template, **kwargs):
    saved, tokenizer.chat_template = tokenizer.chat_template, template or tokenizer.chat_template
    try:
        return tokenizer.apply_chat_template(chat, tokenize=False, **kwargs)
    finally:
        tokenizer.chat_template = saved


@pytest.mark.parametrize("escape", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
    "{{ cycler.__init__.__globals__['os'] }}",
    "{{ messages.append({'role': 'x'}) }}",
])
def test_a_template_cannot_reach_python_internals(pair, escape):
    ours, _ = pair
    saved, ours.chat_template = ours.chat_template, escape
    try:
        with pytest.raises(jinja2.exceptions.SecurityError):
            ours.apply_chat_template(CHATS[0], tokenize=False)
        ours.chat_template = "[{{ messages.__class__ }}{{ raise_exception.__globals__ }}]"
        assert ours.apply_chat_template(CHATS[0], tokenize=False) == "[]"  # unsafe attributes read as undefined
    finally:
        ours.chat_template = saved


def test_raise_exception_and_empty_chats_are_value_errors(pair):
    ours, _ = pair
    saved, ours.chat_template = ours.chat_template, "{{ raise_exception('only user turns') }}"
    try:
        with pytest.raises(jinja2.exceptions.TemplateError, match="only user turns"):
            ours.apply_chat_template(CHATS[0], tokenize=False)
    finally:
        ours.chat_template = saved
    with pytest.raises(ValueError, match="at least one message"):
        ours.apply_chat_template([], tokenize=False)
