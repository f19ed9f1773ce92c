"""Helpers for consuming several engine output streams at once, and for sending typed event streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator, Callable, TypeVar

from .errors import APIError, as_api_error

T = TypeVar("T")
_DONE = object()


async def merge(iterators: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several async iterators as they come, tagged with the iterator's index.

    An error in one is raised here; leaving early cancels (and so aborts) all of them.
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def drain(index: int, iterator: AsyncIterator[T]) -> None:
        try:
            async with contextlib.aclosing(iterator) as items:
                async for item in items:
                    queue.put_nowait((index, item, None))
        except Exception as err:  # handed to the consumer, which raises it
            queue.put_nowait((index, None, err))
        finally:
            queue.put_nowait((index, _DONE, None))

    tasks = [asyncio.create_task(drain(i, it)) for i, it in enumerate(iterators)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item, error = await queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                remaining -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def last_outputs(iterators: list[AsyncIterator[T]]) -> list[T]:
    """The final item of each iterator (the finished output of each request)."""
    finals: list = [None] * len(iterators)
    async with contextlib.aclosing(merge(iterators)) as items:
        async for index, item in items:
            finals[index] = item
    return finals


async def typed_sse(events: AsyncIterator[dict], error_event: Callable[[APIError], dict]) -> AsyncIterator[dict]:
    """Server-sent events named by their payload's ``type`` (the Responses and Anthropic streams); a failure
    after the 200 goes out as one last event, ``error_event``'s, in the API's own shape."""
    try:
        async for event in events:
            yield {"event": event["type"], "data": json.dumps(event, ensure_ascii=False)}
    except Exception as err:  # noqa: BLE001 - reported to the client, which raises it
        event = error_event(as_api_error(err))
        yield {"event": event["type"], "data": json.dumps(event, ensure_ascii=False)}
