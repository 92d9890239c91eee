"""Long work on the event loop, done a slice at a time.

A step function is a generator that works for about `SLICE_S`, yields, goes on where it left off, and returns
its result; `in_slices` runs one to its end and lets every other task run between two slices, `drain` runs one
at once. This is how a discover checks and lists a tree of thousands of extensions and encodes its reply
without holding up the cached answers the event loop gives meanwhile. A worker thread would not do: Python's
threads share one interpreter lock, so Python code in a thread (and a thread making system call after system
call, each one releasing and taking the lock back) keeps the event loop's own code waiting all the same.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import TypeVar

import anyio.lowlevel

T = TypeVar("T")
Steps = Generator[None, None, T]

SLICE_S = 0.0002  # the work between two yields: what a cached answer may wait for


def deadline() -> float:
    """When the slice that starts now should yield (a `time.perf_counter()` value)."""
    return time.perf_counter() + SLICE_S


async def in_slices(steps: Steps[T]) -> T:
    """Runs a step function to its end on the event loop, letting other tasks run between its slices."""
    while True:
        finished = _advance(steps)
        if finished:
            return finished[0]
        await anyio.lowlevel.checkpoint()


def drain(steps: Steps[T]) -> T:
    """Runs a step function to its end at once (for callers that are not on the event loop, or do not mind)."""
    while True:
        finished = _advance(steps)
        if finished:
            return finished[0]


def _advance(steps: Steps[T]) -> list[T]:
    """One slice: `[result]` once the step function has returned, `[]` while it has more to do."""
    try:
        next(steps)
    except StopIteration as stop:
        return [stop.value]
    return []
