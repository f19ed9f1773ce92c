"""Each vocabulary entry's text and raw bytes, for log-probability outputs (OpenAI's ``bytes``).

A token can hold part of a UTF-8 character, so its bytes cannot be recovered from its decoded
text. Byte-level BPE vocabularies (GPT-2, Llama 3, SmolLM2, Qwen) spell bytes with printable
stand-in characters; SentencePiece vocabularies use ``<0xNN>`` byte tokens and ``▁`` for space.
"""

from __future__ import annotations

import functools
import re

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's reversible byte -> printable character table, inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return {char: byte for byte, char in enumerate(chars)}


class TokenBytes:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.byte_level = type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"

    @functools.lru_cache(maxsize=65536)
    def text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    @functools.lru_cache(maxsize=65536)
    def bytes(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if self.byte_level and piece is not None:
            table = _byte_level_decoder()
            if all(char in table for char in piece):
                return bytes(table[char] for char in piece)
        if piece is not None and (match := _BYTE_TOKEN.match(piece)):
            return bytes([int(match.group(1), 16)])
        if piece is not None and not self.byte_level:
            return piece.replace("▁", " ").encode()
        return self.text(token_id).encode()
