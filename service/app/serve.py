"""Assembles the parts from a configuration and runs them until a signal says stop."""

from __future__ import annotations

import gc
import logging
import signal
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from ..contract.config import Config
from ..contract.errors import ConfigError, LoaderError
from ..contract.messages import NushellInfo
from ..core import audit
from ..core.manager import ExtensionManager
from ..core.reconcile import Reconciler
from ..core.registry_access import RegistryAccess
from ..core.releases import Releases
from ..core.store import ExtensionStore
from ..core.version_info import VersionInfo
from ..registry.signing import SigningKeyError, public_key_bytes
from ..runtime.runner import Limits, NushellRunner, find_nu, nu_version
from ..runtime.watcher import DiskWatcher
from ..wire.service import ExtensionService

log = logging.getLogger(__name__)


def service_version() -> str:
    try:
        return metadata.version("extension-loader")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_manager(config: Config, *, instance_id: str | None = None) -> ExtensionManager:
    """Everything below the NATS wiring; raises NushellMissing when `nu` is not there, SandboxMissing when
    `prlimit` is not there and the configuration does not allow Nushell to run without limits."""
    runner = build_runner(config)
    for root in config.extension_paths:
        if not root.is_dir():
            log.warning("extension root %s does not exist", root)
    releases = build_releases(config)
    return ExtensionManager(
        ExtensionStore(config.extension_paths, releases=releases),
        runner,
        capacity=config.orchestrator.extensions.cache_size,
        instance_id=instance_id or uuid.uuid4().hex[:22].upper(),
        nushell=NushellInfo(path=str(runner.nu), version=nu_version(runner.nu)),
        releases=releases,
    )


def build_runner(config: Config, *, cache_dir: Path | None = None, spares: int | None = None) -> NushellRunner:
    """The Nushell runner as configured (`cache_dir`, `spares`: instead of the configured ones)."""
    n = config.nushell
    runner = NushellRunner(
        find_nu(n.path),
        roots=config.extension_paths,
        cache_dir=cache_dir or config.cache_dir,
        limits=Limits(
            timeout_s=n.timeout_s,
            max_concurrent=n.max_concurrent,
            max_pending=n.max_pending,
            max_memory_mb=n.max_memory_mb,
            max_output_kb=n.max_output_kb,
            max_file_mb=n.max_file_mb,
            nice=n.nice,
        ),
        allow_unlimited=n.allow_unlimited,
        spares=n.spares if spares is None else spares,
        spare_max_age_s=n.spare_max_age_s,
    )
    runner.prepare()
    return runner


def build_releases(config: Config) -> Releases | None:
    """The registry's side of the store, when `[registry] enabled`: its saved index read back, each pinned key
    checked (a typo would trust no one, silently; the configuration's own check knows only a key's shape).
    Raises ConfigError naming a bad key."""
    registry = config.registry
    if not registry.enabled:
        return None
    for i, trusted in enumerate(registry.trusted):
        try:
            public_key_bytes(trusted.key, user_keys=registry.accept_v1)
        except SigningKeyError as exc:
            raise ConfigError(f"registry.trusted.{i}.key", str(exc)) from None
    if registry.accept_v1:
        log.warning(
            "registry.accept_v1 is set: releases of the old format (v1), whose dependencies, yanks and versions no "
            "key signed, are loaded too; re-sign them with `extension-loader resign` and unset it"
        )
    releases = Releases(registry, config.cache_dir / ".registry", RegistryAccess())
    releases.restore()
    return releases


async def serve(config: Config, *, on_ready: Callable[[ExtensionService], None] | None = None) -> None:
    """Serves until SIGINT or SIGTERM, then stops gracefully."""
    manager = build_manager(config)
    audit.acting_as(config.nats.name)  # what the service changes by itself is done in its own name
    stop = anyio.Event()
    failure: Exception | None = None
    service = ExtensionService(config, manager, version=service_version())
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                async for signum in signals:
                    log.info("%s received: stopping", signal.Signals(signum).name)
                    stop.set()  # `run` drains what was received, once the start is complete
                    if not service.subscribed:
                        # Still connecting (a NATS server that is not there yet is waited for): nothing can
                        # have been received, so there is nothing to drain.
                        tg.cancel_scope.cancel()
                    return

            tg.start_soon(on_signal)
            try:
                # The runner's spare Nushell processes outlive the service's requests: it drains them first.
                async with manager.runner, service:
                    # What starting made (modules, configuration, the connection) lives as long as the process:
                    # out of the collector's sight, a full collection walks a few objects, not ~40,000 (7 ms here).
                    gc.freeze()
                    await run(service, stop, on_ready=on_ready)
            except Exception as exc:
                failure = _alone(exc)  # raised here, it would leave the task group wrapped in an ExceptionGroup
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


def _alone(exc: Exception) -> Exception:
    """The one exception inside (nested) exception groups of one, so the caller can tell what failed."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def run(
    service: ExtensionService, stop: anyio.Event, *, on_ready: Callable[[ExtensionService], None] | None = None
) -> None:
    """Runs the watcher and auto_load (each as configured) beside the requests until `stop` is set; then drains
    the requests before it stops them, since a request may be waiting on one of auto_load's runs."""
    extensions = service.config.orchestrator.extensions
    async with anyio.create_task_group() as tg:
        if extensions.watch:
            await watch_disk(service, tg)  # first, so no change during auto_load is missed
        if extensions.auto_load:
            tg.start_soon(auto_load, service)
        if on_ready is not None:
            on_ready(service)
        await stop.wait()
        await service.drain()
        tg.cancel_scope.cancel()


async def watch_disk(service: ExtensionService, tg: TaskGroup, *, debounce_ms: int = 300) -> Reconciler:
    """Starts watching the extension roots, in `tg`; returns once the watch is in place. Every change makes the
    store read that extension again; with `auto_load`, the cache is also kept in step with the disk."""
    act = service.config.orchestrator.extensions.auto_load
    reconciler = Reconciler(service.manager, service.publisher.publish, act=act)
    rounds = DiskWatcher(service.manager.store.roots, debounce_ms=debounce_ms).rounds()
    await tg.start(reconciler.run, rounds)
    return reconciler


async def auto_load(service: ExtensionService) -> None:
    """Loads the latest version of every valid extension, a few at a time, while requests are served.

    One that fails is logged, not fatal: a broken extension must not keep the others from loading. One with only
    pre-releases has no latest version: it is logged and skipped, as a load without a version refuses it."""
    manager = service.manager
    results = {"loaded": 0, "failed": 0, "skipped": 0}
    limiter = anyio.CapacityLimiter(manager.runner.limits.max_concurrent)

    async def one(info: VersionInfo) -> None:
        async with limiter:
            try:
                result = await manager.load(info.extension_type, info.name, info.version, reason="auto_load")
            except LoaderError as exc:
                results["failed"] += 1
                log.warning("auto_load of %s failed: %s", info.key, exc.message)
                return
            except Exception:  # one extension must not stop the service
                results["failed"] += 1
                log.exception("auto_load of %s failed", info.key)
                return
            results["loaded"] += 1
            await service.publisher.publish(result.events)

    async with anyio.create_task_group() as tg:
        for available in await manager.discover(None, None):  # a slice at a time: requests are served meanwhile
            if available.latest is None:
                results["skipped"] += 1
                why = (
                    f"no stable version, only the pre-releases {', '.join(available.versions)} "
                    "(load one by its version)"
                    if available.versions
                    else "no version it may load (the registry's are untrusted or yanked; `discover` says which)"
                )
                log.info("auto_load skips %s %s: %s", available.extension_type.value, available.name, why)
                continue
            versions = manager.store.versions(available.extension_type, available.name)
            tg.start_soon(one, versions[available.latest.version])
    log.info("auto_load: %(loaded)d extensions loaded, %(failed)d failed, %(skipped)d skipped", results)
