"""Durable events: with [events] jetstream = true a subscriber that was down replays every event, once. The
stream is `extension-loader setup`'s: the loader only checks it (and, with require_stream, does so even when it
publishes plainly), and does not start without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from service.app.client import LoaderClient
from service.app.natsserver import NatsServer
from service.app.setup import Status
from service.wire.events import EventStreamError, StreamConflict
from tests.conftest import WAIT, EventLog, make_config, running_service, set_up_streams

pytestmark = pytest.mark.anyio


async def test_an_offline_durable_consumer_gets_every_event_once(
    nats_server: NatsServer, nc: Client, events: EventLog, tmp_path: Path
) -> None:
    config = make_config(nats_server.url, tmp_path, overrides={"events.jetstream": True})
    await set_up_streams(nc, config)
    js = nc.jetstream()
    async with running_service(config) as service:
        info = await js.stream_info("EXTENSION_EVENTS")
        assert sorted(info.config.subjects or []) == ["extensions.loaded", "extensions.unloaded"]
        # A subscriber registers its durable consumer, then goes away before anything happens.
        await js.add_consumer(
            "EXTENSION_EVENTS",
            ConsumerConfig(durable_name="audit", deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT),
        )
        client = LoaderClient(nc, timeout=WAIT)
        for name in ("etcd", "redis", "cilium", "coredns"):
            await client.load("taskserv", name)
        await client.load("taskserv", "etcd")  # cached: no event
        await client.reload("taskserv", "redis")
        await client.clear()
    # Leaving the service waited for the events of requests already answered.
    published = service.publisher.published
    assert service.publisher.failed == 0
    # 4 loads, a reload (unloaded + loaded), a clear of 4 entries
    assert published == 4 + 2 + 4
    seen = await events.wait_for(published)
    # The service is gone; the subscriber comes back and replays.
    sub = await js.pull_subscribe_bind("audit", stream="EXTENSION_EVENTS")
    replayed: list[dict[str, Any]] = []
    while len(replayed) < published:
        batch = await sub.fetch(published - len(replayed), timeout=WAIT)
        for msg in batch:
            replayed.append(msgspec.json.decode(msg.data))
            assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == replayed[-1]["event_id"]
            await msg.ack()
    assert [e["event_id"] for e in replayed] == [e["event_id"] for e in seen]
    assert len({e["event_id"] for e in replayed}) == published
    with pytest.raises(nats.errors.TimeoutError):
        await sub.fetch(1, timeout=0.5)  # each event once: nothing is left


async def test_a_retried_event_is_stored_once(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    config = make_config(nats_server.url, tmp_path, overrides={"events.jetstream": True})
    await set_up_streams(nc, config)
    async with running_service(config):
        await LoaderClient(nc, timeout=WAIT).load("provider", "local")
    js = nc.jetstream()
    last = await js.get_last_msg("EXTENSION_EVENTS", "extensions.loaded")
    assert last.headers is not None and last.data is not None
    ack = await js.publish("extensions.loaded", last.data, headers={"Nats-Msg-Id": last.headers["Nats-Msg-Id"]})
    assert ack.duplicate is True
    assert (await js.stream_info("EXTENSION_EVENTS")).state.messages == 1


async def test_an_existing_stream_is_set_to_exactly_the_event_subjects_by_setup(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    """A stream from before over other subjects: the loader will not start beside it and says what to run; setup
    sets it to exactly the event subjects, and then the loader starts."""
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="EXTENSION_EVENTS", subjects=["extensions.loaded", "other.events"]))
    config = make_config(nats_server.url, tmp_path, overrides={"events.jetstream": True})
    with pytest.raises(EventStreamError, match=r"holds extensions\.loaded, other\.events.*extension-loader setup"):
        async with running_service(config):
            pass
    (events_stream, *_) = await set_up_streams(nc, config)
    assert events_stream.status is Status.UPDATED
    async with running_service(config):
        info = await js.stream_info("EXTENSION_EVENTS")
        assert sorted(info.config.subjects or []) == ["extensions.loaded", "extensions.unloaded"]


async def test_a_stream_over_request_subjects_stops_the_service(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    await nc.jetstream().add_stream(StreamConfig(name="EVERYTHING", subjects=["extensions.>"]))
    config = make_config(nats_server.url, tmp_path, overrides={"events.jetstream": True})
    with pytest.raises(StreamConflict, match="EVERYTHING"):
        async with running_service(config):
            pass


async def test_a_server_without_jetstream_stops_the_start_with_a_reason(tmp_path: Path) -> None:
    """events.jetstream on, against a nats-server started without JetStream: a clear EventStreamError (the
    command line's exit status 3), not the client library's ServiceUnavailableError and a traceback."""
    with NatsServer(["-a", "127.0.0.1", "-p", "-1"]) as plain:
        config = make_config(plain.url, tmp_path, overrides={"events.jetstream": True})
        with pytest.raises(EventStreamError, match="is JetStream enabled on the server"):
            async with running_service(config):
                pass


async def test_the_loader_before_setup_does_not_start_and_names_setup(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    """events.jetstream on and no stream: a start error naming the command that makes it; nothing is created."""
    config = make_config(nats_server.url, tmp_path, overrides={"events.jetstream": True})
    with pytest.raises(EventStreamError, match=r"'EXTENSION_EVENTS' .* not there: run `extension-loader setup`"):
        async with running_service(config):
            pass
    assert await _streams(nc) == []


@pytest.mark.parametrize("prefix", ["$JS.API", "$JS.elsewhere.API"], ids=["plain", "another prefix"])
async def test_require_stream_checks_the_stream_even_when_events_are_published_plainly(
    nats_server: NatsServer, nc: Client, tmp_path: Path, prefix: str
) -> None:
    """events.jetstream off, require_stream on: the loader checks (through events.api_prefix) that the stream is
    there before it starts, then publishes plainly, and the stream keeps what it captures. A prefix under which
    no JetStream answers is said to be one."""
    config = make_config(
        nats_server.url,
        tmp_path,
        overrides={"events.require_stream": True, "events.api_prefix": prefix},
    )
    if prefix != "$JS.API":
        with pytest.raises(EventStreamError, match=r"is events\.api_prefix \(\$JS\.elsewhere\.API\) right"):
            async with running_service(config):
                pass
        return
    with pytest.raises(EventStreamError, match="not there: run `extension-loader setup`"):
        async with running_service(config):
            pass
    await set_up_streams(nc, config)
    async with running_service(config) as service:
        assert service.publisher.jetstream is False
        await LoaderClient(nc, timeout=WAIT).load("provider", "local")
    assert service.publisher.published == 1 and service.publisher.failed == 0
    last = await nc.jetstream().get_last_msg("EXTENSION_EVENTS", "extensions.loaded")
    assert last.data is not None and msgspec.json.decode(last.data)["extension"]["metadata"]["name"] == "local"


async def test_without_require_stream_plain_events_need_no_stream(
    nats_server: NatsServer, nc: Client, tmp_path: Path, events: EventLog
) -> None:
    """The default: events.jetstream and require_stream off, the loader starts with no stream at all."""
    async with running_service(make_config(nats_server.url, tmp_path)):
        await LoaderClient(nc, timeout=WAIT).load("provider", "local")
    await events.wait_for(1)
    assert await _streams(nc) == []


async def _streams(nc: Client) -> list[str | None]:
    return [info.config.name for info in await nc.jetstream().streams_info()]
