"""The registry under the repo's own nats.conf, for the attack tests: `admin` has made the buckets (account REG),
the honest publisher and the attacker both log in as `publisher` (PUB) with its password, a loader runs as
`loader` (LIVE) and the orchestrator (LIVE) asks it and hears its events. What tells them apart is the key: the
honest publisher signs with a key the loaders pin, the attacker holds none that they pin (or one pinned for
something else), and writes the buckets directly, past every check the command line makes.

The server and its users are those of tests/deploy/test_nats_security.py, which checks nats.conf itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient, RemoteError
from service.app.publishing import Outcome, prepare, publish, yank
from service.contract.config import Config
from service.contract.messages import ExtensionType
from service.core.folders import tree_digest
from service.core.releases import Releases
from service.registry.archive import digest_bytes, pack
from service.registry.buckets import RegistryBuckets
from service.registry.index import IndexRecord, Release, decode_record, index_key
from service.registry.signing import Signer
from service.wire.service import ExtensionService, flush_subscriptions
from tests.conftest import WAIT, EventLog, make_config, registry_settings, write_extension
from tests.deploy.test_nats_security import LAYOUT, PASSWORDS, REG_API, administer, connect, start_server
from tests.registry import signed

EVENT_SUBJECTS = ("extensions.loaded", "extensions.unloaded")


@dataclass
class Layout:
    """The running server, a `publisher` connection (the registry's buckets through PUB's imports) and an
    `orchestrator` connection that asks the loaders and has heard every event since the start."""

    url: str
    folder: Path
    publisher: Client
    buckets: RegistryBuckets
    client: LoaderClient
    events: EventLog
    _versions: int = 0

    # --- loaders ---

    def loader(self, name: str, *keys: str, auto_update: bool = False, **registry: Any) -> Config:
        """A loader as `loader`, trusting `keys` (or `trusted=[...]`), with no extension tree but `roots`."""
        roots = registry.pop("roots", None)
        if roots is None:
            roots = [self.folder / "no-tree"]
            roots[0].mkdir(exist_ok=True)
        overrides = {
            "nats.user": "loader",
            "nats.password": PASSWORDS["loader"],
            **LAYOUT,
            **registry_settings(*keys, auto_update=auto_update, **registry),
        }
        return make_config(self.url, self.folder / name, roots=roots, overrides=overrides)

    # --- the honest publisher: a trusted key, through publish and yank ---

    def publisher_config(self, trusted: Sequence[str] = ()) -> Config:
        empty = self.folder / "no-tree"
        empty.mkdir(exist_ok=True)
        overrides: dict[str, Any] = {
            "registry.api_prefix": REG_API,
            "registry.trusted": [{"key": key} for key in trusted],
        }
        return make_config(self.url, self.folder / "publisher", roots=[empty], overrides=overrides)

    async def publish(
        self,
        signer: Signer,
        kind: str,
        name: str,
        version: str,
        *,
        dependencies: list[str] | None = None,
        trusted: Sequence[str] = (),
        module: str = "export def check [] { {ok: true} }\n",
    ) -> Release:
        """`extension-loader publish` of a new folder, signed by `signer` (its config trusting `trusted`)."""
        folder = write_extension(
            self.folder / "checkout" / f"{name}-{version}",
            kind,
            name,
            version,
            dependencies=dependencies,
            module=module,
        )
        config = self.publisher_config(trusted)
        outcome = await publish(self.buckets, await prepare(folder, signer, config))
        return outcome.release

    async def yank(self, signer: Signer, kind: str, name: str, version: str, *, undo: bool = False) -> Outcome:
        return await yank(self.buckets, ExtensionType(kind), name, version, signer=signer, undo=undo)

    # --- the attacker: the publisher's password, writing what it likes ---

    async def read(self, kind: str, name: str) -> IndexRecord:
        value, _ = await self.buckets.index.get(index_key(kind, name))
        assert value is not None
        return decode_record(value)

    async def raw(self, key: str) -> bytes:
        value, _ = await self.buckets.index.get(key)
        assert value is not None
        return value

    async def write(self, key: str, value: bytes) -> None:
        """Puts `value` under an index key, whatever is there."""
        _, revision = await self.buckets.index.get(key)
        await self.buckets.index.put(key, value, revision)

    async def forge(
        self, attacker: Signer, kind: str, name: str, version: str, *, dependencies: Sequence[str] = ()
    ) -> Release:
        """An extension that loads, its archive stored and its release signed by `attacker`: what the attacker
        would like loaders to run. Returns the release (not indexed: the caller puts it where it likes)."""
        folder = write_extension(self.folder / "forged" / f"{name}-{version}", kind, name, version)
        archive = pack(folder)
        digest = digest_bytes(archive)
        statement = signed.statement(
            name,
            version,
            kind=ExtensionType(kind),
            digest=digest,
            tree_digest=tree_digest(folder),
            size=len(archive),
            dependencies=dependencies,
        )
        release = signed.release(attacker, statement)
        await self.buckets.archives.put(release.object, archive)
        return release

    # --- what the loaders announced ---

    def mark(self) -> int:
        """Where the events heard so far end: `since` reads from here."""
        return len(self.events.messages)

    async def marker(self, signer: Signer) -> None:
        """A new version of taskserv `marker`, published honestly: a loader with auto_update announces its load
        after everything an earlier change of the index made it announce (one follower applies changes in order)."""
        self._versions += 1
        version = f"1.0.{self._versions}"
        await self.publish(signer, "taskserv", "marker", version)
        with anyio.fail_after(WAIT):
            while not any(_is_marker(b, version) for b in self.events.bodies()):
                await self.events.wait_for(len(self.events.messages) + 1)

    def since(self, mark: int) -> list[dict[str, Any]]:
        """The events heard after `mark`, markers left out."""
        bodies = [msgspec.json.decode(m.data) for m in self.events.messages[mark:]]
        return [b for b in bodies if not _is_marker(b)]


def _is_marker(body: dict[str, Any], version: str | None = None) -> bool:
    metadata = body.get("extension", {}).get("metadata", {})
    name = metadata.get("name", body.get("name"))
    return name == "marker" and (version is None or metadata.get("version", body.get("version")) == version)


@asynccontextmanager
async def layout(folder: Path) -> AsyncIterator[Layout]:
    """nats.conf's server, its buckets made, a publisher and an orchestrator connected."""
    (folder / "nats").mkdir(parents=True)
    server = start_server(folder / "nats")
    try:
        await administer(server.url)
        async with AsyncExitStack() as stack:
            publisher = await stack.enter_async_context(connect(server.url, "publisher"))
            orchestrator = await stack.enter_async_context(connect(server.url, "orchestrator"))
            events = EventLog()
            for subject in EVENT_SUBJECTS:
                await orchestrator.nc.subscribe(subject, cb=events.add)
            await flush_subscriptions(orchestrator.nc)
            buckets = RegistryBuckets(publisher.nc, api_prefix=REG_API, timeout_s=WAIT)
            await buckets.open()
            yield Layout(server.url, folder, publisher.nc, buckets, LoaderClient(orchestrator.nc, timeout=WAIT), events)
    finally:
        server.stop()


# --- what a loader did ---


async def applied(service: ExtensionService, before: int) -> None:
    """Until the loader's follower has applied one more index update than `before`."""
    follower = service.follower
    assert follower is not None
    with anyio.fail_after(WAIT):
        await follower.wait_updates(before + 1)


def updates(service: ExtensionService) -> int:
    follower = service.follower
    assert follower is not None
    return follower.updates


async def wait_until(service: ExtensionService, condition: Callable[[Releases], bool]) -> None:
    """Until `condition` holds of the loader's view of the registry, looked at after each index update."""
    follower, releases = service.follower, service.manager.releases
    assert follower is not None and releases is not None
    with anyio.fail_after(WAIT):
        while not condition(releases):
            await follower.wait_updates(follower.updates + 1)


async def wait_until_known(service: ExtensionService, kind: str, name: str, version: str) -> None:
    """Until the loader's follower has read `version` of an extension from the index."""
    await wait_until(service, lambda releases: version in releases.versions(ExtensionType(kind), name))


def archives(service: ExtensionService) -> set[str]:
    """The digests of the archives this loader keeps (`sha256:<hex>`)."""
    folder = service.config.cache_dir / ".registry" / "archives"
    if not folder.is_dir():
        return set()
    return {"sha256:" + p.name.removesuffix(".tar.gz") for p in folder.iterdir() if p.name.endswith(".tar.gz")}


def trees(service: ExtensionService) -> set[str]:
    """The digests of the archives this loader has a folder of under `trees/`."""
    folder = service.config.cache_dir / ".registry" / "trees"
    if not folder.is_dir():
        return set()
    return {"sha256:" + p.name for p in folder.iterdir() if p.is_dir() and p.name != "missing"}


def audit_lines(caplog: pytest.LogCaptureFixture, action: str) -> list[tuple[str, str, str]]:
    """(extension, outcome, message) of each audit line of one action."""
    lines = [r for r in caplog.records if r.name == "service.audit" and r.__dict__.get("action") == action]
    return [(r.__dict__["extension"], r.__dict__["outcome"], r.getMessage()) for r in lines]


def loaded(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(type, name, version) of each `extensions.loaded` event."""
    found = []
    for event in events:
        if "extension" in event:
            metadata = event["extension"]["metadata"]
            found.append((metadata["extension_type"], metadata["name"], metadata["version"]))
    return found


async def refusal(call: Awaitable[Any]) -> RemoteError:
    """The error a request is answered with."""
    with pytest.raises(RemoteError) as caught:
        await call
    return caught.value
