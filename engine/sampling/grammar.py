"""Grammars compiled once, matchers per sequence, token masks per step (llguidance).

``GrammarCompiler.matcher`` turns a request's ``StructuredOutputsParams`` into a fresh matcher: the
grammar is compiled once per distinct grammar text (an LRU cache of compiled matchers, each new
request getting a copy, ~5 us) and the tokenizer is wrapped once per engine, on first use (~0.3 s).
It is thread-safe and runs where requests are prepared, never on the engine thread of a server.

``fill_bitmask`` computes the allowed tokens of every constrained row of a step into one packed
bitmask (1 bit per token); ``apply_bitmask`` is our eager apply:
each byte of the mask looks up the 8 penalties (0 or -inf) of its tokens, which are added in place.

A JSON output also counts what it has open (``JsonDepth``). When its remaining tokens come within
``CLOSING_MARGIN`` of that count, its mask keeps only the grammar's closing tokens (``"``, ``]``, ``}``)
whenever the grammar allows one, so it ends valid instead of being cut at max_tokens: a recursive
schema otherwise lets a model nest until it runs out.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .sampling_params import InvalidSamplingParam, StructuredOutputsParams

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLTokenizer

CACHE_SIZE = 256  # distinct grammars kept compiled
# A JSON output closes what it has open once its remaining tokens come within this many of the count
# of open strings, arrays and objects (a recursive schema lets a model nest until max_tokens otherwise).
CLOSING_MARGIN = 16
CLOSING_CHARACTERS = frozenset('"]}')
# JSON as json.dumps writes it. llguidance's default allows any whitespace anywhere, where a small model
# can spend all its tokens on newlines; a schema's "x-guidance" options still override this.
JSON_OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
# For each byte of a packed mask, what its 8 tokens add to their logits: 0 if allowed, -inf if not.
# Looking the mask's bytes up in it (an embedding lookup of 32-byte rows) and adding the result is
# ~0.5 ms for 32 rows of 49k tokens on 2 cores; a bool mask with masked_fill_ is ~4 ms.
_BYTE_PENALTIES = torch.tensor([[0.0 if (byte >> bit) & 1 else float("-inf") for bit in range(8)] for byte in range(256)])


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
        return grammar_from("choice", list(params.choice))
    try:
        return grammar_from("grammar", params.grammar)  # Lark, or GBNF converted to Lark
    except ValueError as err:
        raise InvalidSamplingParam("structured_outputs", f"structured_outputs.grammar: {err}") from None


class GrammarCompiler:
    def __init__(self, tokenizer, vocab_size: int) -> None:
        """``vocab_size``: the model's (its logits' width), which may exceed the tokenizer's."""
        self._text_tokenizer, self.vocab_size = tokenizer, vocab_size
        self._tokenizer: LLTokenizer | None = None
        self._compiled: OrderedDict[str, LLMatcher] = OrderedDict()
        self._closers: torch.Tensor | None = None
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

    def closers(self) -> torch.Tensor:
        """Packed int32 bitmask of the tokens made only of ``"``, ``]`` and ``}``: what closes JSON."""
        with self._lock:
            if self._closers is None:
                pieces = self._text_tokenizer.convert_ids_to_tokens(list(range(len(self._text_tokenizer))))
                allowed = torch.zeros((self.vocab_size + 31) // 32 * 32, dtype=torch.bool)
                for token_id, piece in enumerate(pieces):
                    if piece and token_id < self.vocab_size and set(piece) <= CLOSING_CHARACTERS:
                        allowed[token_id] = True
                self._closers = _pack(allowed)
            return self._closers

    def _llg_tokenizer(self) -> "LLTokenizer":
        if self._tokenizer is None:
            from llguidance import LLTokenizer

            backend = self._text_tokenizer.backend_tokenizer
            self._tokenizer = LLTokenizer(backend.to_str(), n_vocab=self.vocab_size,
                                          eos_token=self._text_tokenizer.eos_token_id)
        return self._tokenizer


class JsonDepth:
    """How many JSON strings, arrays and objects the text fed so far leaves open."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def feed(self, text: str) -> None:
        for char in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "[{":
                self.depth += 1
            elif char in "]}":
                self.depth -= 1

    @property
    def num_open(self) -> int:
        return self.depth + self.in_string


def _pack(allowed: torch.Tensor) -> torch.Tensor:
    """Bools (a multiple of 32 long) -> int32 words, bit t of word t // 32 = allowed[t]."""
    bits = allowed.view(-1, 32).to(torch.int64) << torch.arange(32)
    words = bits.sum(dim=1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def fill_bitmask(matchers: list["LLMatcher"], vocab_size: int) -> torch.Tensor:
    """int32 ``[len(matchers), ceil(vocab / 32)]``: bit t of row i set = matcher i allows token t.

    Row by row on this thread (each call releases the GIL). On 2 cores that beats llguidance's thread
    pool: 3.3 against 4.0 ms for 32 rows, whose threads wait on cores torch's threads still hold.
    """
    unique = list({id(m): m for m in matchers}.values())  # a fork step has n rows on one matcher
    bitmask = torch.empty((len(unique), (vocab_size + 31) // 32), dtype=torch.int32)
    row_bytes = bitmask.shape[1] * bitmask.element_size()
    for index, matcher in enumerate(unique):
        matcher.unsafe_compute_mask_ptr(bitmask.data_ptr() + index * row_bytes, row_bytes)
    if len(unique) == len(matchers):
        return bitmask
    slot = {id(matcher): index for index, matcher in enumerate(unique)}
    return bitmask[[slot[id(m)] for m in matchers]]


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Set to -inf, in place, each logit of row ``rows[i]`` whose bit in ``bitmask[i]`` is clear (fp32 logits)."""
    table = _BYTE_PENALTIES.to(logits.device)
    penalties = F.embedding(bitmask.to(logits.device).view(torch.uint8).long(), table)
    penalties = penalties.view(len(rows), -1)[:, : logits.shape[1]]
    if len(rows) == logits.shape[0]:
        logits.add_(penalties)
    else:  # some rows are free
        logits.index_add_(0, torch.tensor(rows, device=logits.device), penalties)
