"""Incremental detokenization: the joined deltas are exactly the full decode, for any id sequence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.model.loader import resolve_model
from engine.processing.detokenizer import IncrementalDetokenizer
from engine.processing.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(default_model):
    """The engine's own tokenizer: the one its detokenizers run with."""
    return load_tokenizer(resolve_model(str(default_model)))


def _stream(tokenizer, prompt_ids, ids, skip_special_tokens=True):
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens)
    deltas = [detok.append(t) for t in ids]
    return deltas, detok.text


@pytest.mark.parametrize("text", [
    "plain words and spaces",
    "naïve café, 東京タワー and 北京 are places",
    "emoji: 🦙🚀👩‍👩‍👧 done",
    "  leading spaces\n\ttabs\nand new lines  ",
])
def test_deltas_join_to_the_full_text(tokenizer, text):
    ids = tokenizer.encode(text)
    deltas, joined = _stream(tokenizer, tokenizer.encode("Prompt:"), ids)
    assert "".join(deltas) == joined == tokenizer.decode(ids)
    assert all("\ufffd" not in d for d in deltas)


def test_multibyte_character_is_held_until_complete(tokenizer):
    ids = tokenizer.encode("🦙")
    assert len(ids) > 1  # byte-level BPE splits the emoji over several tokens
    deltas, _ = _stream(tokenizer, [], ids)
    assert deltas[:-1] == [""] * (len(ids) - 1) and deltas[-1] == "🦙"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 49151), min_size=1, max_size=40), st.lists(st.integers(0, 49151), max_size=8))
def test_random_ids_never_drop_or_duplicate_text(tokenizer, ids, prompt_ids):
    _, joined = _stream(tokenizer, prompt_ids, ids)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    # Trailing bytes that never complete a character are held back; everything else comes out once.
    assert full.startswith(joined)
    assert "\ufffd" not in full[len(joined):].rstrip("\ufffd") or full.rstrip("\ufffd") == joined.rstrip("\ufffd")
