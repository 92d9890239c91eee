"""Metrics through the OpenTelemetry metrics API: the numbers of `extensions.stats`, for dashboards.

Instruments: `extension_loader.requests` (by subject and outcome), `extension_loader.load.duration` (cold
loads, ms), and observable `extension_loader.cache.hits|misses|evictions`, `extension_loader.cache.size` and
`extension_loader.loads.in_flight`, read from the manager's own counters so both views always agree. With no
meter provider configured (`OTEL_METRICS_EXPORTER` unset or `none`) the API records nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

if TYPE_CHECKING:  # the manager records into this module: import it for types only
    from .manager import ExtensionManager

meter = metrics.get_meter("extension-loader")

requests = meter.create_counter(
    "extension_loader.requests", unit="{request}", description="requests handled, by subject and outcome"
)
load_duration = meter.create_histogram(
    "extension_loader.load.duration", unit="ms", description="cold loads: one Nushell run each"
)


_managers: weakref.WeakSet[ExtensionManager] = weakref.WeakSet()


def observe(manager: ExtensionManager) -> None:
    """Makes the observable instruments report this manager's counters (one series per instance)."""
    _managers.add(manager)


def _reading(value: Callable[[ExtensionManager], int]) -> Callable[[CallbackOptions], Iterable[Observation]]:
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
