"""Waiting for a state to change: the one primitive behind every `wait_until` of the service.

A task waits for a condition (`await notifier.wait_until(lambda: count >= 3)`); whatever changes the state calls
`notify()`, which is synchronous, so a nats-py callback or a counter's owner can call it without a task of
its own. anyio's `Condition` would need its lock held to notify, which a synchronous caller cannot take
without racing the waiters that hold it across a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio


class Notifier:
    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        """Wakes every task waiting now; they look at their condition again."""
        self._event.set()
        self._event = anyio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Returns once `condition()` holds (at once if it holds now)."""
        while not condition():
            await self._event.wait()
