"""Every string a request carries must be valid Unicode.

JSON's ``\\u`` escapes can spell a lone UTF-16 surrogate (``"\\ud800"``): Python keeps it in a
``str``, but neither UTF-8 nor a tokenizer takes it, so it would fail deep in the engine as a
500. Each route checks its decoded body here once, before reading any field, and answers 400
naming the field.
"""

from __future__ import annotations

from fastapi import Request

from .errors import APIError


def check_text(body: object) -> None:
    """Raise ``APIError`` naming a string (value or key) of a decoded JSON body that is not valid Unicode."""
    pending: list[tuple[str, object]] = [("", body)]
    while pending:  # a loop, not recursion: bodies may nest deeply
        path, value = pending.pop()
        if isinstance(value, str):
            _check_string(value, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                _check_string(key, child)
                pending.append((child, item))
        elif isinstance(value, list):
            pending.extend((f"{path}.{index}" if path else str(index), item) for index, item in enumerate(value))


async def check_request_text(request: Request) -> None:
    """A router dependency: the JSON body's strings are valid Unicode (other bodies are left to the route)."""
    if request.method != "POST" or not await request.body():
        return
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON: the route's own parsing reports it
        return
    check_text(body)


def _check_string(value: object, path: str) -> None:
    if not isinstance(value, str) or value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        where = path.encode("utf-8", "backslashreplace").decode()  # the path may hold the bad key itself
        raise APIError(f"{where or 'body'} must be valid Unicode text: it holds an unpaired UTF-16 surrogate "
                       f"({value[err.start]!r} at position {err.start})", param=where or None) from None
