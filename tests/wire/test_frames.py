"""Replies written as ready-made frames reach a subscriber exactly as `publish(headers=...)` delivers them."""

from __future__ import annotations

import anyio
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from service.app.natsserver import NatsServer
from service.wire.frames import PINNED, FrameWriter, header_block, nats_py_version
from tests.conftest import WAIT

pytestmark = pytest.mark.anyio


def test_the_pinned_nats_py_is_the_one_installed() -> None:
    """The frames use nats-py's outgoing buffer, a private API: with another release they are not used."""
    assert nats_py_version() == PINNED


async def test_a_frame_arrives_as_publish_sends_it(nats_server: NatsServer, nc: Client) -> None:
    writer = FrameWriter(nc)
    assert writer.usable
    received: list[Msg] = []
    arrived = anyio.Event()

    async def got(msg: Msg) -> None:
        received.append(msg)
        if len(received) == 4:
            arrived.set()

    await nc.subscribe("frames.>", cb=got)
    await nc.flush()
    headers = {"Content-Type": "application/msgpack", "Nats-Service-Error-Code": "404"}
    for body in (b'{"success":true}', b""):
        await nc.publish("frames.publish", body, headers=headers)
        await writer.reply("frames.frame", header_block(headers), body)
    with anyio.fail_after(WAIT):
        await arrived.wait()
    by_way = {(m.subject, m.data): m.headers for m in received}
    for body in (b'{"success":true}', b""):
        assert by_way[("frames.frame", body)] == by_way[("frames.publish", body)] == headers
    assert nc.stats["out_msgs"] >= 4


async def test_another_nats_py_release_is_not_trusted_with_frames(nc: Client) -> None:
    assert not FrameWriter(nc, version="2.17.0").usable
