"""Spare Nushell processes, with the real `nu` and the real service: started ahead, each used once, replaced.

Every process is found in /proc by this test's own cache folder (in its environment), so other tests' or other
people's Nushell processes on the machine are never counted.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient, RemoteError
from service.app.natsserver import NatsServer
from service.contract.config import Config
from service.runtime.runner import nu_version
from service.wire.service import ExtensionService
from tests.conftest import (
    NU,
    WAIT,
    describe,
    make_config,
    nushell_processes,
    proc_strings,
    running_service,
    service_process,
    stat_fields,
    thread_niceness,
)

pytestmark = pytest.mark.anyio


def ours(config: Config) -> set[int]:
    """The Nushell processes alive for this test's service (by its cache folder, not by process id alone:
    with ids up to 32768 and a busy machine, a reaped process's id soon belongs to another)."""
    return set(nushell_processes(config.cache_dir))


async def spares_waiting(service: ExtensionService, *, besides: list[int] | None = None) -> list[int]:
    """Waits until every slot has a spare waiting, none of them one of `besides`; returns their ids."""
    pool = service.manager.runner.spares
    gone = set(besides or ())
    with anyio.fail_after(WAIT):
        return await pool.wait_for(lambda pids: len(pids) == pool.size and not gone & set(pids))


async def test_spares_wait_in_the_sandbox(nats_server: NatsServer, tmp_path: Path) -> None:
    config = make_config(nats_server.url, tmp_path)
    async with running_service(config) as service:
        pids = await spares_waiting(service)
        assert len(pids) == 2 == config.nushell.spares
        assert service.manager.runner.running == 0  # waiting spares are not runs: max_concurrent is all the loads'
        extra = ours(config) - set(pids)  # (one that is becoming `nu` this very moment is not seen)
        assert not extra, [describe(pid) for pid in extra]
        for pid in pids:
            # prlimit's command line until it has set the limits and started `nu` in its place: both name it.
            cmdline = proc_strings(pid, "cmdline")
            assert str(NU).encode() in cmdline and cmdline[-4:] == [b"module", b"serve-one", b"--ahead", b""]
            assert os.getpgid(pid) == pid == os.getsid(pid)  # its own process group, which is killed whole
            assert set(thread_niceness(pid)) == {min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)}  # every thread
            environ = proc_strings(pid, "environ")
            assert {e.split(b"=", 1)[0] for e in environ if e} == {
                b"PATH",
                b"HOME",
                b"LANG",
                b"PROVISIONING_EXTENSION_PATHS",
                b"PROVISIONING_EXTENSION_CACHE",
            }


async def test_a_spare_serves_one_load_and_is_gone(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    config = make_config(nats_server.url, tmp_path)
    async with running_service(config) as service:
        runner = service.manager.runner
        client = LoaderClient(nc, timeout=WAIT)
        first, second = await spares_waiting(service)

        assert (await client.load("taskserv", "etcd"))["metadata"]["name"] == "etcd"
        # The oldest spare served it and was reaped; the other waits on, and a new one took the used one's place.
        assert first not in ours(config) and second in ours(config)
        after_one = await spares_waiting(service, besides=[first])
        assert second in after_one

        assert (await client.load("taskserv", "redis"))["metadata"]["name"] == "redis"
        assert second not in ours(config)
        await spares_waiting(service, besides=[first, second])
        assert (runner.spare_runs, runner.fresh_runs) == (2, 0)


async def test_a_killed_spare_is_replaced(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    config = make_config(nats_server.url, tmp_path)
    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        killed, _ = await spares_waiting(service)
        os.kill(killed, signal.SIGKILL)
        # Next in line is the killed one: the load finds it gone and is served all the same.
        assert (await client.load("taskserv", "etcd"))["metadata"]["name"] == "etcd"
        replaced = await spares_waiting(service, besides=[killed])
        assert killed not in ours(config)
        # Both together: every waiting spare killed at once.
        for pid in replaced:
            os.kill(pid, signal.SIGKILL)
        assert (await client.load("taskserv", "redis"))["metadata"]["name"] == "redis"
        await spares_waiting(service, besides=[killed, *replaced])
        assert not ours(config) & set(replaced)
    assert nushell_processes(config.cache_dir) == []


async def test_no_spare_is_left_after_stop(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    config = make_config(nats_server.url, tmp_path, overrides={"nushell.spares": 4})
    async with running_service(config) as service:
        pids = await spares_waiting(service)
        assert len(pids) == 4
        await LoaderClient(nc, timeout=WAIT).load("taskserv", "etcd")
        pids += await spares_waiting(service)
    assert ours(config) == set()


async def test_no_spare_is_left_after_the_service_process_stops(nats_server: NatsServer, tmp_path: Path) -> None:
    """SIGTERM to `extension-loader serve`: it drains, then kills and reaps its spares before it exits."""
    cache = tmp_path / "data" / "extensions"
    with service_process(nats_server.url, tmp_path) as proc:
        # The spares are started before the service subscribes, so they are there once it says it serves.
        spares = children(proc.pid)
        assert len(spares) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    assert nushell_processes(cache) == []


def children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (from /proc/<pid>/stat, readable at any moment of a process's
    life, unlike its command line while it replaces its program)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = stat_fields(entry / "stat")
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


async def test_with_no_spares_every_load_starts_its_own_process(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    config = make_config(nats_server.url, tmp_path, overrides={"nushell.spares": 0})
    async with running_service(config) as service:
        runner = service.manager.runner
        assert nushell_processes(config.cache_dir) == [] and runner.spares.idle_pids() == []
        assert (await LoaderClient(nc, timeout=WAIT).load("taskserv", "etcd"))["metadata"]["name"] == "etcd"
        assert nushell_processes(config.cache_dir) == []
        assert (runner.spare_runs, runner.fresh_runs) == (0, 1)


async def test_old_spares_are_replaced(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    config = make_config(nats_server.url, tmp_path, overrides={"nushell.spare_max_age_s": 0.5})
    async with running_service(config) as service:
        old = await spares_waiting(service)
        await spares_waiting(service, besides=old)  # no load in between: they grew old
        assert not ours(config) & set(old)
        assert (await LoaderClient(nc, timeout=WAIT).load("taskserv", "etcd"))["metadata"]["name"] == "etcd"
        assert service.manager.runner.spare_runs == 1


async def test_spares_that_no_longer_fit_are_not_used(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    """A spare runs what was on disk when it started: after `nu` is replaced or the working folder is made
    anew, a load does not hand its request to it, and the spares are replaced."""
    nu_copy = tmp_path / "bin" / "nu"
    nu_copy.parent.mkdir()
    shutil.copy2(NU, nu_copy)
    config = make_config(nats_server.url, tmp_path, overrides={"nushell.path": str(nu_copy)})
    async with running_service(config) as service:
        runner = service.manager.runner
        client = LoaderClient(nc, timeout=WAIT)
        before = await spares_waiting(service)
        upgraded = nu_copy.with_name("nu.new")
        shutil.copy2(NU, upgraded)
        upgraded.replace(nu_copy)  # as a package manager upgrades a binary: a new file under the same name
        assert (await client.load("taskserv", "etcd"))["metadata"]["name"] == "etcd"
        assert (runner.spare_runs, runner.fresh_runs) == (0, 1)
        after = await spares_waiting(service, besides=before)
        assert not ours(config) & set(before)

        shutil.rmtree(runner.workdir)
        assert (await client.load("taskserv", "redis"))["metadata"]["name"] == "redis"
        assert (runner.spare_runs, runner.fresh_runs) == (0, 2)
        await spares_waiting(service, besides=after)
        assert (await client.load("taskserv", "cilium"))["metadata"]["name"] == "cilium"
        assert runner.spare_runs == 1


async def test_spares_that_cannot_start_leave_loads_failing_cleanly(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    """A `nu` that answers `--version` but dies at once otherwise: spares die young and are started again after a
    pause; a load gets load_failed, not a hang; nothing is left behind."""
    fake = tmp_path / "bin" / "nu"
    fake.parent.mkdir()
    fake.write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && {{ echo {nu_version(NU)}; exit 0; }}\necho broken >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    config = make_config(nats_server.url, tmp_path, overrides={"nushell.path": str(fake)})
    async with running_service(config) as service:
        with pytest.raises(RemoteError) as info:
            await LoaderClient(nc, timeout=WAIT).load("taskserv", "etcd")
        assert info.value.code == "load_failed" and "broken" in info.value.details["stderr"]
        assert service.manager.runner.running == 0
    assert nushell_processes(config.cache_dir) == []
