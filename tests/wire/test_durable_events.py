"""Durable events: with [events] jetstream = true a subscriber that was down replays every event, once."""

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
from service.wire.events import EventStreamError, StreamConflict
from tests.conftest import WAIT, EventLog, make_config, running_service

pytestmark = pytest.mark.anyio


async def test_an_offline_durable_consumer_gets_every_event_once(
    nats_server: NatsServer, nc: Client, events: EventLog, tmp_path: Path
) -> None:
    config = make_config(nats_server.url, tmp_path, overrides={"events.jetstream": True})
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
    async with running_service(config):
        await LoaderClient(nc, timeout=WAIT).load("provider", "local")
    js = nc.jetstream()
    last = await js.get_last_msg("EXTENSION_EVENTS", "extensions.loaded")
    assert last.headers is not None and last.data is not None
    ack = await js.publish("extensions.loaded", last.data, headers={"Nats-Msg-Id": last.headers["Nats-Msg-Id"]})
    assert ack.duplicate is True
    assert (await js.stream_info("EXTENSION_EVENTS")).state.messages == 1


async def test_an_existing_stream_is_set_to_exactly_the_event_subjects(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="EXTENSION_EVENTS", subjects=["extensions.loaded", "other.events"]))
    async with running_service(make_config(nats_server.url, tmp_path, overrides={"events.jetstream": True})):
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
