"""A fuzz run over real NATS: thousands of mutated requests against `extension-loader serve` in its own process.

Every request gets an envelope in the encoding it was sent in, with a contract error code when it fails; no
reply carries a traceback; and a plain load still works at the end. The mutations are seeded, so a failure can be
replayed. Memory is not judged here (a threshold on RSS made this test flaky): `make bench` reports the service's
RSS.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient
from service.app.natsserver import NatsServer
from service.contract.errors import ERROR_CODES
from tests.conftest import WAIT, service_process

pytestmark = pytest.mark.anyio

SEED = 20261125
ROUNDS = 3  # of 1,000 requests each
IN_FLIGHT = 32

VALID: dict[str, list[dict[str, Any]]] = {
    "load": [
        {"extension_type": "taskserv", "name": "kubernetes", "version": "1.28.0"},
        {"extension_type": "cluster", "name": "buildkit", "with_dependencies": True},
        {"extension_type": "providers", "name": "aws", "version": "^2"},
    ],
    "reload": [{"extension_type": "taskserv", "name": "etcd"}],
    "list": [{}, {"extension_type": "taskserv"}],
    "status": [{"extension_type": "taskserv", "name": "kubernetes", "version": "~1.28.0"}],
    "discover": [{}, {"extension_type": "cluster", "name": "ci-cd"}],
    "cache.clear": [{}],
    "stats": [{}],
    "graph": [{"extension_type": "cluster", "name": "ci-cd", "format": "mermaid"}],
}
ODD_VALUES: list[Any] = [
    None,
    True,
    -1,
    2**70,
    1.5e308,
    "",
    "../../etc/passwd",
    "a" * 5000,
    "ünï\u0000cödé",
    "\ud7ff\ue000",
    [],
    {},
    [[[]]],
    {"$ne": 1},
    "latest",
    ">=1,<",
]


def mutate(rng: random.Random, body: dict[str, Any]) -> tuple[bytes, bool]:
    """A mutated request body, and whether it is sent as MessagePack."""
    data = dict(body)
    for _ in range(rng.randint(0, 3)):
        choice = rng.random()
        if choice < 0.3 and data:
            data[rng.choice(list(data))] = rng.choice(ODD_VALUES)
        elif choice < 0.45:
            data[rng.choice(["nmae", "Name", "extension_type", "version", "x" * rng.randint(1, 300)])] = rng.choice(
                ODD_VALUES
            )
        elif choice < 0.55 and data:
            del data[rng.choice(list(data))]
    packed = rng.random() < 0.3
    try:
        raw = bytearray(msgspec.msgpack.encode(data) if packed else json.dumps(data).encode())
    except OverflowError:  # MessagePack has no integers past 64 bits: send that one as JSON
        packed, raw = False, bytearray(json.dumps(data).encode())
    for _ in range(rng.choice([0, 0, 1, 2, 5])):
        op = rng.random()
        at = rng.randrange(len(raw) + 1)
        if op < 0.4 and raw:
            raw[min(at, len(raw) - 1)] = rng.randrange(256)
        elif op < 0.7:
            raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del raw[at : at + rng.randint(1, 8)]
    return bytes(raw), packed


@pytest.fixture
def fuzz_target(nats_server: NatsServer, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with service_process(nats_server.url, tmp_path) as proc:
        yield proc


async def test_thousands_of_mutated_requests(fuzz_target: subprocess.Popen[bytes], nc: Client) -> None:
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    limiter = anyio.CapacityLimiter(IN_FLIGHT)

    async def one(subject: str, body: bytes, packed: bool, headers: dict[str, str]) -> None:
        async with limiter:
            reply = await nc.request(f"extensions.{subject}", body, timeout=WAIT, headers=headers)
        try:
            envelope = msgspec.msgpack.decode(reply.data) if packed else msgspec.json.decode(reply.data)
        except msgspec.DecodeError:
            problems.append(f"{subject} {body!r}: reply not in the request's encoding: {reply.data[:200]!r}")
            return
        if b"Traceback" in reply.data or b'File "' in reply.data:
            problems.append(f"{subject} {body!r}: traceback in the reply")
        if envelope.get("success") is True:
            outcomes["ok"] += 1
            return
        code = (envelope.get("error") or {}).get("code")
        if code not in ERROR_CODES or envelope.get("success") is not False:
            problems.append(f"{subject} {body!r}: not an error envelope: {envelope!r:.300}")
        outcomes[str(code)] += 1

    for _ in range(ROUNDS):
        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                subject = rng.choice(list(VALID))
                body, packed = mutate(rng, rng.choice(VALID[subject]))
                headers = {"Content-Type": "application/msgpack"} if packed else {}
                if rng.random() < 0.1:
                    headers["traceparent"] = rng.choice(["garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-00"])
                tg.start_soon(one, subject, body, packed, headers)

    assert not problems, "\n".join(problems[:20])
    assert sum(outcomes.values()) == ROUNDS * 1000
    assert outcomes["invalid_request"] > 1000 and outcomes["ok"] > 100, outcomes
    assert (await LoaderClient(nc, timeout=WAIT).load("taskserv", "redis"))["metadata"]["name"] == "redis"
    print(f"outcomes: {dict(outcomes)}")
