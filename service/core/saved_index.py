"""The registry's index as this loader last knew it, kept in `<cache_dir>/.registry/index.json`: written after
each change, read back at start, so a loader started without JetStream still knows the versions it fetched
before. The file holds the records as the bucket did (what they are trusted for is judged again on reading),
the highest signed sequence seen of each extension, and the newest trusted timestamp: a restart never forgets
how new a record must be, and the automatic loads still owed (at an edge site, a newly published latest whose
archive was not there yet): a restart does not forget to announce them. A file of the earlier layout (records
only) is read with no sequences.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from ..registry.index import IndexRecord
from ..registry.statements import Envelope

log = logging.getLogger(__name__)


class Saved(msgspec.Struct, frozen=True, kw_only=True):
    records: tuple[IndexRecord, ...]
    sequences: dict[str, int] = {}
    timestamp: Envelope | None = None
    owed: tuple[str, ...] = ()  # automatic loads still owed (`Releases.owe_load`), by version key


def save_index(path: Path, saved: Saved) -> None:
    """Keeps `saved` in the file `path`: written whole, then renamed over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = msgspec.json.encode(saved)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_bytes(body)
    temporary.replace(path)


def read_index(path: Path) -> Saved | None:
    """What was saved in `path`; None when there is no such file, or it cannot be read (which is logged)."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=Saved)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        log.warning("registry: the saved index %s cannot be read (%s); starting without it", path, exc)
        return None
