"""Loading a resolved dependency tree: every node as soon as all of its own dependencies are loaded, so
independent ones load at the same time.

A failure fails the whole with the error a load in install order, one at a time, would meet first: no node
after the earliest failure in that order is started, none before it is held back (its dependencies all come
before it), and what is already running finishes (another request may share its run).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio

from .dependencies import DependencyTree
from .version_info import VersionInfo

T = TypeVar("T")


async def load_tree(
    tree: DependencyTree, load_one: Callable[[VersionInfo], Awaitable[T]], *, max_concurrent: int
) -> tuple[list[T], Exception | None]:
    """The results of the nodes that loaded, in install order (`tree.order`), and the earliest failure in that
    order, if any (a `LoaderError`, or a defect, which the caller raises)."""
    order: Sequence[VersionInfo] = tree.order
    index = {node.key: i for i, node in enumerate(order)}
    waiting_on: list[set[int]] = [set() for _ in order]
    dependents: list[list[int]] = [[] for _ in order]
    for source, target in tree.edges:
        if source in index and target in index:
            waiting_on[index[source]].add(index[target])
            dependents[index[target]].append(index[source])
    results: dict[int, T] = {}
    errors: dict[int, Exception] = {}
    started = [False] * len(order)
    slots = anyio.CapacityLimiter(max_concurrent)

    async def load(i: int) -> None:
        try:
            async with slots:
                results[i] = await load_one(order[i])
        except Exception as exc:  # a LoaderError, or a defect: returned below if it is the earliest
            errors[i] = exc
        else:
            for j in dependents[i]:
                waiting_on[j].discard(i)
        start_ready()

    def start_ready() -> None:
        earliest_failure = min(errors, default=len(order))
        for i in range(earliest_failure):
            if not started[i] and not waiting_on[i]:
                started[i] = True
                tg.start_soon(load, i)

    async with anyio.create_task_group() as tg:
        start_ready()
    return [results[i] for i in sorted(results)], errors[min(errors)] if errors else None
