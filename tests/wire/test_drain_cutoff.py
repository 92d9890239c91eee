"""A stop whose drain time runs out still answers: a request still running then gets `unavailable`.

Review issue 11, point 3: with `nats.drain_timeout_s = 0.5`, SIGTERM during a load that takes seconds ended the
service (exit 0) without a reply, and the caller waited out its whole time-out. Both the real `serve` process
and the in-process `ExtensionService.stop()` are checked, each with a real Nushell run cut off mid-parse.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient, RemoteError
from service.app.natsserver import NatsServer
from service.contract.config import Config
from service.wire.dispatcher import STOPPING
from tests.conftest import WAIT, make_config, nushell_processes, running_service, service_process, write_extension

pytestmark = pytest.mark.anyio

DRAIN_S = 0.5
# The caller's own time-out: far longer than the drain time, far shorter than the Nushell time limit (30 s),
# so a missing reply shows as this time-out, never as some later error.
CALLER_TIMEOUT_S = 15.0
PROMPTLY_S = CALLER_TIMEOUT_S / 2  # the reply, or its absence, is known well before the caller gives up

# Parse-time evaluation that keeps `nu-check` busy for seconds (about 4 s on two loaded cores) with little
# memory: forty small sums rather than one big one, which would pass the runner's memory limit.
SLOW_PARSE = "\n".join(f"const n{i} = (1..500000 | math sum)" for i in range(40)) + "\nexport def x [] { $n0 }\n"


async def wait_for_run(client: LoaderClient, cache_dir: Path) -> None:
    """Returns once the service runs Nushell for a load: `in_flight` says so and its `nu` process is alive
    (each look is a round trip to the service, no sleep)."""
    with anyio.fail_after(WAIT):
        while (await client.stats())["in_flight"] < 1 or not nushell_processes(cache_dir):
            pass


async def cut_off_load(client: LoaderClient, outcome: list[Any]) -> None:
    try:
        outcome.append(await client.load("taskserv", "slow", "1.0.0"))
    except (RemoteError, TimeoutError) as exc:
        outcome.append(exc)


def assert_unavailable_stopping(outcome: list[Any]) -> None:
    assert len(outcome) == 1
    error = outcome[0]
    assert isinstance(error, RemoteError), f"the caller got no error reply: {error!r}"
    assert error.code == "unavailable", error
    assert error.details == {"reason": STOPPING}


async def test_sigterm_past_the_drain_time_answers_unavailable(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "slow", "1.0.0", module=SLOW_PARSE)
    cache_dir = tmp_path / "data" / "extensions"
    lines: list[str] = []
    with service_process(
        nats_server.url, tmp_path, roots=[root], overrides={"nats.drain_timeout_s": DRAIN_S}, lines=lines
    ) as proc:
        client = LoaderClient(nc, timeout=CALLER_TIMEOUT_S)
        outcome: list[Any] = []
        with anyio.move_on_after(PROMPTLY_S) as waited:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cut_off_load, client, outcome)
                await wait_for_run(client, cache_dir)
                proc.send_signal(signal.SIGTERM)
        assert not waited.cancelled_caught, f"no reply within {PROMPTLY_S} s of the request"
        assert_unavailable_stopping(outcome)
        code = await anyio.to_thread.run_sync(proc.wait, WAIT)
    log = "".join(lines)
    assert code == 0, log
    assert "1 requests still running after the drain time" in log, log
    assert "Traceback" not in log, log
    assert nushell_processes(cache_dir) == []


async def test_stop_past_the_drain_time_answers_unavailable_in_process(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "slow", "1.0.0", module=SLOW_PARSE)
    config: Config = make_config(nats_server.url, tmp_path, roots=[root], overrides={"nats.drain_timeout_s": DRAIN_S})
    client = LoaderClient(nc, timeout=CALLER_TIMEOUT_S)
    outcome: list[Any] = []
    with anyio.move_on_after(PROMPTLY_S) as waited:
        # The service inside the caller's task group: its stop exits its own task group, opened after the caller's.
        async with anyio.create_task_group() as tg, running_service(config) as service:
            tg.start_soon(cut_off_load, client, outcome)
            await wait_for_run(client, config.cache_dir)
            await service.stop()
    assert not waited.cancelled_caught, f"no reply within {PROMPTLY_S} s of the request"
    assert_unavailable_stopping(outcome)
    assert nushell_processes(config.cache_dir) == []
