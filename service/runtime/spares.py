"""Spare processes: started ahead of time, each waiting on its standard input for the one request it will serve.

A cold load takes a spare (`take`) instead of starting a process, hands it its request and runs it to the end
like any other run; the spare's slot starts the next spare once that run is over. A spare is never reused.
Each of `size` slots keeps one spare: a spare that exits unused (killed, or broken from the start) is reaped
and replaced, after a growing pause while spares keep dying young, so a broken set-up does not spin; one older
than `max_age_s` is replaced, and so is one that no longer fits what a load needs (`take` compares the key the
spare was started with). Leaving the pool's context kills and reaps every spare still waiting; a spare
already taken belongs to its load, which reaps it. The pool knows nothing of what the processes run.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Literal, Self

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ..contract.errors import LoaderError
from ..notify import Notifier
from .sandbox import SandboxedProcess

log = logging.getLogger(__name__)

# A spare that exits unused sooner than this after its start counts as a failed start: the next one waits a
# while (doubling from FIRST_PAUSE_S up to MAX_PAUSE_S), so a binary that cannot start is not restarted in a loop.
YOUNG_S = 5.0
FIRST_PAUSE_S = 0.1
MAX_PAUSE_S = 10.0

Fate = Literal["taken", "discarded"]


class _Spare:
    def __init__(self, process: SandboxedProcess, key: object) -> None:
        self.process = process
        self.key = key
        self.fate: Fate | None = None
        self.settled = anyio.Event()

    def settle(self, fate: Fate) -> None:
        self.fate = fate
        self.settled.set()


class SparePool:
    def __init__(
        self,
        start: Callable[[], Awaitable[SandboxedProcess]],
        key: Callable[[], Hashable],
        *,
        size: int,
        max_age_s: float,
    ) -> None:
        """`start` starts one process that waits for its input; `key` says what a spare started now would be
        fit for (a spare whose key differs from the one `take` is given is discarded)."""
        self._start = start
        self._key = key
        self.size = size
        self.max_age_s = max_age_s
        self._idle: deque[_Spare] = deque()
        self._tg: TaskGroup | None = None
        self._changed = Notifier()

    async def __aenter__(self) -> Self:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            for _ in range(self.size):
                await tg.start(self._keep)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg, self._tg = self._tg, None
        if tg is None:
            return None
        tg.cancel_scope.cancel()
        # The slots' own errors, if any: an exception from the body goes on by itself.
        await tg.__aexit__(None, None, None)
        return None

    def take(self, key: Hashable) -> SandboxedProcess | None:
        """The oldest waiting spare that is alive and fits `key`, now the caller's to hand over and finish (or
        stop); None when there is none. Spares passed over are left to their slots to stop and replace."""
        while self._idle:
            spare = self._idle.popleft()
            if spare.process.alive and spare.key == key:
                spare.settle("taken")
                self._changed.notify()
                return spare.process
            spare.settle("discarded")
        self._changed.notify()
        return None

    def idle_pids(self) -> list[int]:
        """The process ids of the spares waiting now, oldest first."""
        return [s.process.pid for s in self._idle if s.process.alive]

    async def wait_for(self, condition: Callable[[list[int]], bool]) -> list[int]:
        """Waits until `condition` holds for `idle_pids()`; returns them."""
        await self._changed.wait_until(lambda: condition(self.idle_pids()))
        return self.idle_pids()

    async def wait_full(self) -> list[int]:
        """Waits until every slot has a spare waiting (never, while spares cannot start); returns their ids."""
        return await self.wait_for(lambda pids: len(pids) >= self.size)

    async def _keep(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """One slot: keeps one spare waiting, for as long as the pool lives."""
        failures = 0
        ready = False
        while True:
            spare: _Spare | None = None
            try:
                key = self._key()
                spare = _Spare(await self._start(), key)
            except LoaderError as exc:  # Nushell or the working folder is not there
                failures += 1
                log.warning("a spare Nushell process could not be started: %s", exc.message)
            if not ready:
                task_status.started()
                ready = True
            if spare is not None:
                ended = await self._watch(spare)
                if ended == "taken":
                    failures = 0
                    # The next one starts when this one's run is over: started at once, it would take CPU time
                    # from that very run (on two cores, nearly doubling it) to be ready a few ms sooner.
                    await spare.process.ended.wait()
                    continue
                if ended == "exited":
                    lived = time.monotonic() - spare.process.started
                    failures = failures + 1 if lived < YOUNG_S else 1
                    log.warning(
                        "spare Nushell process %d exited unused (status %s) after %.1f s; starting another",
                        spare.process.pid,
                        spare.process.process.returncode,
                        lived,
                    )
                else:
                    failures = 0
            if failures > 1:
                await anyio.sleep(min(MAX_PAUSE_S, FIRST_PAUSE_S * 2 ** (failures - 2)))

    async def _watch(self, spare: _Spare) -> Literal["taken", "exited", "replaced"]:
        """Waits until the spare is taken, exits, grows old or is passed over; stops it unless it was taken."""
        self._idle.append(spare)
        self._changed.notify()
        exited = False
        try:
            with anyio.move_on_after(self.max_age_s):
                async with anyio.create_task_group() as tg:

                    async def watch_exit() -> None:
                        nonlocal exited
                        await spare.process.process.wait()
                        exited = True
                        tg.cancel_scope.cancel()

                    tg.start_soon(watch_exit)
                    await spare.settled.wait()
                    tg.cancel_scope.cancel()
        finally:
            if spare.fate != "taken":
                exited = exited or not spare.process.alive
                # Reaped before it leaves the list: whoever waits for the list to change finds it gone. Meanwhile
                # `take` passes it over, as it does any spare that is dying.
                await spare.process.stop()
                if spare in self._idle:
                    self._idle.remove(spare)
                    self._changed.notify()
        if spare.fate == "taken":
            return "taken"
        return "exited" if exited else "replaced"
