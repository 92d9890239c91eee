"""Metrics through the OpenTelemetry metrics API: the numbers of `extensions.stats`, for dashboards.

Instruments: `extension_loader.requests` (by subject and outcome), `extension_loader.load.duration` (cold
loads, ms), and observable `extension_loader.cache.hits|misses|evictions`, `extension_loader.cache.size`,
`extension_loader.loads.in_flight` and `extension_loader.registry.view_age` (with `stale`), read from the
manager's own counters so both views always agree. With no meter provider configured (`OTEL_METRICS_EXPORTER`
unset or `none`) the API records nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from ..contract.messages import Stats

meter = metrics.get_meter("extension-loader")

requests = meter.create_counter(
    "extension_loader.requests", unit="{request}", description="requests handled, by subject and outcome"
)
load_duration = meter.create_histogram(
    "extension_loader.load.duration", unit="ms", description="cold loads: one Nushell run each"
)


class Counted(Protocol):
    """What the observable instruments read: the manager, seen from here without importing it (it records into
    this module, so importing it back would make a cycle)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def counters(self) -> CacheCounters: ...

    def stats(self) -> Stats: ...


class CacheCounters(Protocol):
    hits: int
    misses: int
    evictions: int


_managers: weakref.WeakSet[Counted] = weakref.WeakSet()


def observe(manager: Counted) -> None:
    """Makes the observable instruments report this manager's counters (one series per instance)."""
    _managers.add(manager)


def _reading(value: Callable[[Counted], int]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        for manager in list(_managers):
            yield Observation(value(manager), {"service.instance.id": manager.instance_id})

    return callback


for _name, _value, _description in (
    ("hits", lambda m: m.counters.hits, "loads answered from the cache"),
    ("misses", lambda m: m.counters.misses, "loads that ran Nushell"),
    ("evictions", lambda m: m.counters.evictions, "entries the LRU cache pushed out"),
):
    meter.create_observable_counter(
        f"extension_loader.cache.{_name}", [_reading(_value)], unit="{load}", description=_description
    )
meter.create_observable_gauge(
    "extension_loader.cache.size", [_reading(lambda m: m.stats().cache.size)], unit="{extension}"
)
meter.create_observable_gauge(
    "extension_loader.loads.in_flight", [_reading(lambda m: m.stats().in_flight)], unit="{load}"
)


def _view_age(options: CallbackOptions) -> Iterable[Observation]:
    for manager in list(_managers):
        registry = manager.stats().registry
        if registry is not None and registry.view_age_s is not None:
            stale = registry.stale is not None
            yield Observation(registry.view_age_s, {"service.instance.id": manager.instance_id, "stale": stale})


meter.create_observable_gauge(
    "extension_loader.registry.view_age",
    [_view_age],
    unit="s",
    description="seconds since the newest signed timestamp of the registry's index (stale: over registry.max_age_s)",
)
