"""Stop strings over incrementally decoded text: where one matched, and what must be held back."""

from __future__ import annotations


def find_stop(text: str, stops: tuple[str, ...], new_from: int) -> tuple[int, str] | None:
    """The earliest stop string in ``text`` that ends after ``new_from`` (text before it was checked)."""
    best: tuple[int, str] | None = None
    for stop in stops:
        at = text.find(stop, max(0, new_from - len(stop) + 1))
        if at != -1 and (best is None or at < best[0]):
            best = (at, stop)
    return best


def undecided_tail(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of ``text`` that could still grow into a stop string.

    A streamed delta must not show it yet: if the stop string completes, it is cut.
    """
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
