"""The registry's errors: nats-py's many become three of ours, each saying what to do.

RegistryError
+-- RegistryUnavailable   not connected, a bucket missing, no answer in time, permission refused
+-- Conflict              the index record changed since it was read (compare-and-set lost)
+-- ArchiveTooLarge       an archive is larger than the caller accepts, or than its metadata says
"""

from __future__ import annotations


class RegistryError(Exception):
    """Root of the registry's JetStream errors."""


class RegistryUnavailable(RegistryError):
    """The registry cannot be used now: not connected, a bucket missing, no answer in time, permission
    refused, or an object in the bucket that is not whole. The message says which, and what to do."""


class Conflict(RegistryError):
    """The index record changed since it was read: another writer won the compare-and-set."""

    def __init__(self, key: str, revision: int) -> None:
        self.key = key
        self.revision = revision
        read = f"revision {revision}" if revision else "no record"
        super().__init__(f"index key {key!r} was written by someone else since {read} was read: read it again")


class ArchiveTooLarge(RegistryError):
    """An archive is larger than the caller accepts, or holds more bytes than its metadata announces."""

    def __init__(self, name: str, size: int, limit: int, *, announced: bool = False) -> None:
        self.name = name
        self.size = size
        self.limit = limit
        self.announced = announced
        if announced:
            why = f"more than the {limit} its metadata announces: the object is corrupt; publish it again"
        else:
            why = f"more than the {limit} accepted: raise the limit, or do not load this release"
        super().__init__(f"archive {name!r} has {size} bytes or more, {why}")
