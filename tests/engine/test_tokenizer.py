"""Our tokenizer (the Rust model and tokenizer_config.json, without transformers' classes) against
transformers' AutoTokenizer on the same folder: the same ids, text, pieces, special tokens and
rendered chats. And the chat template sandbox: a template cannot reach Python's internals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from parity import assert_same_tokenizer
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


def test_ids_text_pieces_and_template_equal_transformers(pair):
    assert_same_tokenizer(*pair, TEXTS)


@pytest.mark.parametrize("template", [None, QWEN_TEMPLATE], ids=["model", "qwen2.5"])
def test_chats_render_as_transformers_renders_them(pair, template):
    ours, ref = pair
    for chat in CHATS if template else CHATS[:2]:  # SmolLM2's template has no tool calls
        for kwargs in ({"add_generation_prompt": True}, {"add_generation_prompt": False}, {"tools": [WEATHER]}):
            expected = ref.apply_chat_template(chat, tokenize=False, chat_template=template, **kwargs)
            assert ours.apply_chat_template(chat, tokenize=False, chat_template=template, **kwargs) == expected
    opened = CHATS[1][:3]
    expected = ref.apply_chat_template(opened, tokenize=False, chat_template=template, continue_final_message=True)
    assert ours.apply_chat_template(opened, tokenize=False, chat_template=template,
                                    continue_final_message=True) == expected
    assert expected.endswith("Hello!")


@pytest.mark.parametrize("escape", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
    "{{ cycler.__init__.__globals__['os'] }}",
    "{{ messages.append({'role': 'x'}) }}",
])
def test_a_template_cannot_reach_python_internals(pair, escape):
    ours, _ = pair
    with pytest.raises(ValueError, match="could not render the messages: SecurityError"):
        ours.apply_chat_template(CHATS[0], tokenize=False, chat_template=escape)
    unsafe = "[{{ messages.__class__ }}{{ raise_exception.__globals__ }}]"
    assert ours.apply_chat_template(CHATS[0], tokenize=False, chat_template=unsafe) == "[]"  # read as undefined


def test_raise_exception_bad_syntax_and_empty_chats_are_value_errors(pair):
    """Rejected like a bad prompt (``LLM.chat`` runs the other conversations, the server answers 400)."""
    ours, _ = pair
    with pytest.raises(ValueError, match="TemplateError: only user turns"):
        ours.apply_chat_template(CHATS[0], tokenize=False, chat_template="{{ raise_exception('only user turns') }}")
    with pytest.raises(ValueError, match="TemplateSyntaxError"):
        ours.apply_chat_template(CHATS[0], tokenize=False, chat_template="{% for m in messages %}")
    with pytest.raises(ValueError, match="at least one message"):
        ours.apply_chat_template([], tokenize=False)
