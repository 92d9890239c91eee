"""The registry's index as this loader last knew it, kept in `<cache_dir>/.registry/index.json`: written after
each change, read back at start, so a loader started without JetStream still knows the versions it fetched
before. The file holds the records as the bucket did; what they are trusted for is judged again on reading.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import msgspec

from ..registry.index import IndexRecord

log = logging.getLogger(__name__)


class _Snapshot(msgspec.Struct, frozen=True):
    records: tuple[IndexRecord, ...]


def save_index(path: Path, records: Iterable[IndexRecord]) -> None:
    """Keeps `records` in the file `path`: written whole, then renamed over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = msgspec.json.encode(_Snapshot(tuple(records)))
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_bytes(body)
    temporary.replace(path)


def read_index(path: Path) -> tuple[IndexRecord, ...] | None:
    """The records saved in `path`; None when there is no such file, or it cannot be read (which is logged)."""
    try:
        snapshot = msgspec.json.decode(path.read_bytes(), type=_Snapshot)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        log.warning("registry: the saved index %s cannot be read (%s); starting without it", path, exc)
        return None
    return snapshot.records
