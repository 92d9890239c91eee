"""The registry side of the edge benchmarks: the versions they publish at the hub and what each side's index holds.

`Publisher` prepares and publishes versions of small generated extensions (taskservs whose `mod.nu` does nothing)
through the hub, signed by one key that the site's loaders trust, and keeps what each publish signed (its tree
digest above all, which every load at the site is compared with). A publish that fails (a hub node killed, a
leader being elected) is tried again until it lands or its time is up; one that is refused because the version
is already published, with the same archive, had landed on an attempt whose answer was lost.
`versions_held` reads which versions an index (the hub's bucket, or the site's mirror of it) holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client

from service.app.publishing import Prepared, PublishRefused, prepare, publish
from service.contract.config import Config, load_config
from service.registry.buckets import RegistryBuckets
from service.registry.index import IndexRecordInvalid, decode_record, index_key
from service.registry.signing import Signer, read_seed, write_seed

from .options import BenchError, Options
from .services import toml_string

KIND = "taskserv"
RETRY_S = 0.5  # between attempts of a publish that failed
INDEX_TIMEOUT_S = 5.0


@dataclass
class Published:
    """One version as published: what it signed, when its publish began and ended, how many attempts it took."""

    name: str
    version: str
    tree_digest: str
    began: float  # monotonic
    done: float
    attempts: int
    answer_lost: bool  # an attempt landed but its answer did not come back; a later one was told so


def new_signer(work: Path) -> Signer:
    seed = work / "publisher.nk"
    write_seed(seed)
    return read_seed(seed)


def publishing_config(options: Options, work: Path) -> Config:
    """What `prepare` needs: the Nushell that checks each folder as a load would."""
    return load_config(
        environ={},
        overrides=[
            f"nushell.path={toml_string(str(options.nu))}",
            f"orchestrator.paths.data_dir={toml_string(str(work / 'data-publisher'))}",
        ],
    )


def extension_folder(tree: Path, name: str, version: str) -> Path:
    """`<tree>/taskservs/<name>/<version>`, a valid extension, made if it is not there."""
    folder = tree / "taskservs" / name / version
    if not folder.is_dir():
        folder.mkdir(parents=True)
        (folder / "metadata.toml").write_text(
            f'name = "{name}"\nversion = "{version}"\ndescription = "edge benchmark extension {name}"\n'
            'type = "taskserv"\ndependencies = []\n'
        )
        (folder / "mod.nu").write_text(f"export def check [] {{ {{ok: true, version: '{version}'}} }}\n")
    return folder


class Publisher:
    """Publishes through `nc` (the hub's `publisher`, under `$JS.reg.API`); `published` holds every version that
    landed, by (name, version)."""

    def __init__(self, nc: Client, api_prefix: str, signer: Signer, config: Config, tree: Path) -> None:
        self.buckets = RegistryBuckets(nc, timeout_s=INDEX_TIMEOUT_S, api_prefix=api_prefix)
        self.signer = signer
        self.config = config
        self.tree = tree
        self.published: dict[tuple[str, str], Published] = {}
        self.failures: dict[str, int] = {}  # attempts that failed, by the error's type

    async def open(self) -> None:
        await self.buckets.open()

    async def prepare(self, name: str, version: str) -> Prepared:
        return await prepare(extension_folder(self.tree, name, version), self.signer, self.config)

    async def publish(self, prepared: Prepared, within_s: float) -> Published:
        """Publishes it, trying again until it lands; BenchError when it has not within `within_s`."""
        began = time.monotonic()
        attempts = 0
        lost = False
        while True:
            attempts += 1
            try:
                await publish(self.buckets, prepared)
                break
            except PublishRefused as exc:
                if prepared.release.digest not in str(exc) or "already published" not in str(exc):
                    raise BenchError(f"publish of {prepared.name} {prepared.release.version}: {exc}") from None
                lost = True  # an earlier attempt landed; its answer was lost
                break
            except Exception as exc:  # a node killed, a leader being elected, a time-out: tried again
                kind = type(exc).__name__
                self.failures[kind] = self.failures.get(kind, 0) + 1
                if time.monotonic() - began > within_s:
                    raise BenchError(
                        f"publish of {prepared.name} {prepared.release.version} did not land in {within_s} s "
                        f"({attempts} attempts, the last: {kind}: {exc})"
                    ) from None
                await asyncio.sleep(RETRY_S)  # a pace between attempts, not a wait for an outcome
        release = prepared.release
        done = Published(prepared.name, release.version, release.tree_digest, began, time.monotonic(), attempts, lost)
        self.published[(prepared.name, release.version)] = done
        return done


async def versions_held(buckets: RegistryBuckets, names: Iterable[str]) -> dict[str, set[str]]:
    """The versions the index of `buckets` lists for each of `names` (of type taskserv)."""
    held: dict[str, set[str]] = {}
    for name in names:
        value, _ = await buckets.index.get(index_key(KIND, name))
        held[name] = set(record_versions(value))
    return held


def record_versions(value: bytes | None) -> list[str]:
    """The versions an index record lists; [] for none or a record that cannot be read."""
    if not value:
        return []
    try:
        return list(decode_record(value).releases)
    except IndexRecordInvalid:
        return []
