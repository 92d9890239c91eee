"""What NATS cannot check, the service does: it answers only into an inbox, and its event handlers ignore what
is not an event a loader published.

NATS checks no permission on a reply subject, and `allow_responses` lets a responder publish its answer
wherever the reply subject says. A request whose reply subject is an event subject would have a loader
publish its answer there, where every subscriber (and the event log) takes it for an event. And anyone who may
ask JetStream something can have the answer delivered onto an event subject: a direct get's stored message, a
pull consumer's messages. These tests try both against a real nats-server and a real service, and judge by
the outcome: no message reaches the event subjects, the cache keeps its entries, the next request is answered.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from service.app.client import LoaderClient
from service.app.natsserver import NatsServer
from service.contract.messages import ExtensionType
from service.wire.micro import SERVICE_NAME
from service.wire.service import ExtensionService
from tests.conftest import WAIT, EventLog, make_config, running_service

pytestmark = pytest.mark.anyio

T = ExtensionType.TASKSERV
LOAD = msgspec.json.encode({"extension_type": "taskserv", "name": "etcd"})


async def test_a_request_whose_reply_is_an_event_subject_gets_no_answer_and_does_nothing(
    service: ExtensionService, nc: Client, client: LoaderClient, events: EventLog
) -> None:
    for subject in ("extensions.unloaded", "extensions.loaded", "extensions.load", "elsewhere.x"):
        await nc.publish("extensions.load", LOAD, reply=subject)
    # The same request with an inbox is answered, and it is the first to run Nushell: the four before it did
    # nothing at all (no load, no reply, no event).
    loaded = await client.load("taskserv", "etcd")
    assert loaded["metadata"]["name"] == "etcd"
    assert service.manager.runs == 1
    await events.wait_for(1)
    await nc.flush()
    assert [(m.subject, msgspec.json.decode(m.data)["reason"]) for m in events.messages] == [
        ("extensions.loaded", "load")
    ]
    load = next(e for e in service.endpoints if e.subject == "extensions.load")
    assert load.stats.num_errors == 4
    assert "is not an inbox" in load.stats.last_error


async def test_a_services_api_request_is_answered_into_an_inbox_only(
    service: ExtensionService, nc: Client, events: EventLog
) -> None:
    await nc.publish(f"$SRV.PING.{SERVICE_NAME}", b"", reply="extensions.unloaded")
    pong = await nc.request(f"$SRV.PING.{SERVICE_NAME}", b"", timeout=WAIT)
    assert msgspec.json.decode(pong.data)["name"] == SERVICE_NAME
    await nc.flush()
    assert events.messages == []


async def test_the_reply_prefixes_are_configurable(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    config = make_config(nats_server.url, tmp_path, overrides={"nats.reply_prefixes": ["_INBOX.", "answers."]})
    async with running_service(config):
        sub = await nc.subscribe("answers.>")
        await nc.publish("extensions.stats", b"", reply="answers.one")
        with anyio.fail_after(WAIT):
            msg = await sub.next_msg(timeout=WAIT)
        assert msgspec.json.decode(msg.data)["success"] is True


async def _cache_two(client: LoaderClient, service: ExtensionService) -> None:
    await client.load("taskserv", "etcd")
    await client.load("taskserv", "redis")
    assert {e.metadata.name for e in service.manager.loaded(T)} == {"etcd", "redis"}


def _peer_event(name: str, reason: str = "cleared") -> bytes:
    return msgspec.json.encode(
        {
            "event_id": "0" * 32,
            "reason": reason,
            "extension_type": "taskserv",
            "name": name,
            "version": "3.5.9" if name == "etcd" else "7.2.4",
            "instance_id": "ANOTHER-INSTANCE",
            "timestamp": "2026-12-07T00:00:00Z",
        }
    )


async def _version_of(service: ExtensionService, name: str) -> str:
    return next(e.metadata.version for e in service.manager.loaded(T) if e.metadata.name == name)


async def test_a_stream_s_answers_sent_onto_an_event_subject_are_not_taken_for_events(
    service: ExtensionService, nc: Client, client: LoaderClient
) -> None:
    """An event-shaped record kept in a stream, then handed out onto `extensions.unloaded` by a direct get and by
    a pull consumer whose fetch names that subject as its reply: the loader ignores both, while a genuine peer
    event published after them is acted on."""
    await _cache_two(client, service)
    etcd, redis = await _version_of(service, "etcd"), await _version_of(service, "redis")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="FORGED", subjects=["forged.>"], allow_direct=True))
    forged = msgspec.json.encode(msgspec.json.decode(_peer_event("etcd")) | {"version": etcd})
    await js.publish("forged.event", forged)
    await js.add_consumer("FORGED", ConsumerConfig(durable_name="relay", ack_policy=AckPolicy.EXPLICIT))

    await nc.publish("$JS.API.DIRECT.GET.FORGED", b'{"last_by_subj": "forged.event"}', reply="extensions.unloaded")
    await nc.publish("$JS.API.CONSUMER.MSG.NEXT.FORGED.relay", b'{"batch": 1}', reply="extensions.unloaded")
    # A fetch that finds nothing more ends with a status message (404, no body); an API answer has no mark at
    # all, only a body that is not an event.
    await nc.publish(
        "$JS.API.CONSUMER.MSG.NEXT.FORGED.relay", b'{"batch": 1, "no_wait": true}', reply="extensions.unloaded"
    )
    await nc.publish("$JS.API.STREAM.INFO.FORGED", b"", reply="extensions.unloaded")
    with anyio.fail_after(WAIT):
        await service.wait_until(ignored_events=4)

    genuine = msgspec.json.encode(msgspec.json.decode(_peer_event("redis")) | {"version": redis})
    await nc.publish("extensions.unloaded", genuine)
    with anyio.fail_after(WAIT):
        await service.wait_until(peer_events=1)
    assert [e.metadata.name for e in service.manager.loaded(T)] == ["etcd"]
    assert service.peer_events == 1


async def test_a_message_with_a_stream_header_on_an_event_subject_is_ignored(
    service: ExtensionService, nc: Client, client: LoaderClient
) -> None:
    await _cache_two(client, service)
    etcd = await _version_of(service, "etcd")
    forged = msgspec.json.encode(msgspec.json.decode(_peer_event("etcd")) | {"version": etcd})
    # (A client cannot send a `$JS.ACK.` reply itself: the server refuses it; only a stream's delivery has one,
    # which the test above shows ignored.)
    await nc.publish("extensions.unloaded", forged, headers={"Nats-Stream": "KV_extension-index"})
    with anyio.fail_after(WAIT):
        await service.wait_until(ignored_events=1)
    assert {e.metadata.name for e in service.manager.loaded(T)} == {"etcd", "redis"}
    assert service.peer_events == 0
