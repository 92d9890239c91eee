from __future__ import annotations

import pytest

from service.app.client import LoaderClient
from tests.conftest import EventLog

pytestmark = pytest.mark.anyio


async def test_cold_then_cached_load(client: LoaderClient, events: EventLog) -> None:
    first = await client.load("taskserv", "kubernetes", "1.28.0")
    assert first["metadata"]["version"] == "1.28.0"
    loaded = await events.wait_for(1, ".loaded")
    assert loaded[0]["cold"] is True
    second = await client.load("taskserv", "kubernetes", "1.28.0")
    assert second == first
