"""Grammars compiled once, matchers per sequence, token masks per step (llguidance).

``GrammarCompiler.matcher`` turns a request's ``StructuredOutputsParams`` into a fresh matcher: the
grammar is compiled once per distinct grammar text (an LRU cache of compiled matchers, each new
request getting a copy, ~5 us) and the tokenizer is wrapped once per engine, on first use (~0.3 s).
It is thread-safe and runs where requests are prepared, never on the engine thread of a server.

``fill_bitmask`` computes the allowed tokens of every constrained row of a step into one packed
bitmask (llguidance's parallel executor, 1 bit per token); ``apply_bitmask`` is our eager apply:
the mask's bytes index a 256 x 8 table of bits, one gather and one masked fill for all rows.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import torch

from .sampling_params import InvalidSamplingParam, StructuredOutputsParams

if TYPE_CHECKING:
    from llguidance import LLExecutor, LLMatcher, LLTokenizer

CACHE_SIZE = 256  # distinct grammars kept compiled
# JSON as json.dumps writes it. llguidance's default allows any whitespace anywhere, where a small model
# can spend all its tokens on newlines; a schema's "x-guidance" options still override this.
JSON_OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
_BYTE_BITS = torch.tensor([[(byte >> bit) & 1 for bit in range(8)] for byte in range(256)], dtype=torch.bool)


def grammar_text(params: StructuredOutputsParams) -> str:
    """The llguidance grammar (not yet checked: compiling it does that)."""
    from llguidance import LLMatcher, grammar_from

    if params.json_object:
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
    if params.json is not None:
        schema = params.json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as err:
                raise InvalidSamplingParam("structured_outputs", f"structured_outputs.json is not JSON: {err}") from None
        if not isinstance(schema, dict):
            raise InvalidSamplingParam("structured_outputs", "structured_outputs.json must be a JSON schema (an object)")
        return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    if params.regex is not None:
        return LLMatcher.grammar_from_regex(params.regex)
    if params.choice is not None:
        return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in params.choice))
    try:
        return grammar_from("grammar", params.grammar)  # Lark, or GBNF converted to Lark
    except ValueError as err:
        raise InvalidSamplingParam("structured_outputs", f"structured_outputs.grammar: {err}") from None


class GrammarCompiler:
    def __init__(self, tokenizer, vocab_size: int) -> None:
        """``vocab_size``: the model's (its logits' width), which may exceed the tokenizer's."""
        self._hf_tokenizer, self.vocab_size = tokenizer, vocab_size
        self._tokenizer: LLTokenizer | None = None
        self._compiled: OrderedDict[str, LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, params: StructuredOutputsParams) -> "LLMatcher":
        """A matcher at the start of ``params``' grammar; ``InvalidSamplingParam`` if it cannot compile."""
        from llguidance import LLMatcher

        text = grammar_text(params)
        with self._lock:
            compiled = self._compiled.get(text)
            if compiled is not None:
                self._compiled.move_to_end(text)
                return compiled.deep_copy()
            tokenizer = self._llg_tokenizer()
        compiled = LLMatcher(tokenizer, text, log_level=0)  # releases the GIL while it compiles
        if compiled.is_error():
            raise InvalidSamplingParam(
                "structured_outputs", f"the {params.kind} grammar cannot be compiled: {compiled.get_error().strip()}")
        with self._lock:
            self._compiled[text] = compiled
            while len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        return compiled.deep_copy()

    def _llg_tokenizer(self) -> "LLTokenizer":
        if self._tokenizer is None:
            from llguidance.hf import from_tokenizer

            self._tokenizer = from_tokenizer(self._hf_tokenizer, n_vocab=self.vocab_size)
        return self._tokenizer


class MaskFiller:
    """Fills a step's bitmask rows on llguidance's thread pool (created on the first constrained step)."""

    def __init__(self) -> None:
        self._executor: LLExecutor | None = None

    def fill(self, matchers: list["LLMatcher"], vocab_size: int) -> torch.Tensor:
        """int32 ``[len(matchers), ceil(vocab / 32)]``: bit t of row i set = matcher i allows token t."""
        from llguidance import LLExecutor
        from llguidance.torch import fill_next_token_bitmask_par

        if self._executor is None:
            self._executor = LLExecutor()
        # a prompt's fork step has n rows on one matcher, which may be filled only once
        slot = {id(matcher): index for index, matcher in enumerate({id(m): m for m in matchers}.values())}
        unique = list({id(m): m for m in matchers}.values())
        bitmask = torch.empty((len(unique), (vocab_size + 31) // 32), dtype=torch.int32)
        fill_next_token_bitmask_par(self._executor, [(matcher, i) for i, matcher in enumerate(unique)], bitmask)
        return bitmask if len(unique) == len(matchers) else bitmask[[slot[id(m)] for m in matchers]]


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Set to -inf, in place, each logit of row ``rows[i]`` whose bit in ``bitmask[i]`` is clear."""
    index = torch.tensor(rows, device=logits.device)
    allowed = _BYTE_BITS[bitmask.view(torch.uint8).long()].flatten(1)[:, : logits.shape[1]]
    logits[index] = logits[index].masked_fill(~allowed.to(logits.device), float("-inf"))
