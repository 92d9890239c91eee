"""The fetcher's own bounds and folders, as configured. (A fetch itself, from a real JetStream archive bucket to
what Nushell loads, is tested end to end in tests/app/test_registry_loads.py and test_registry_races.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.contract.config import RegistryConfig
from service.core.fetching import ReleaseFetcher, unpack_limits
from service.core.registry_access import RegistryAccess
from service.core.trust import Trust
from service.registry.archive import UnpackLimits
from tests.conftest import make_config, registry_settings
from tests.registry import signed

KEY = signed.key()


def registry(**more: Any) -> RegistryConfig:
    settings = registry_settings(KEY.public_key, **more)
    return make_config("nats://127.0.0.1:4222", Path("/nonexistent"), overrides=settings).registry


def test_the_unpack_limits_are_the_configured_ones_in_bytes() -> None:
    assert unpack_limits(registry(max_archive_mb=3, max_unpacked_mb=5, max_files=7)) == UnpackLimits(
        max_archive_bytes=3 * 1024 * 1024, max_unpacked_bytes=5 * 1024 * 1024, max_files=7
    )
    assert unpack_limits(registry()) == UnpackLimits(
        max_archive_bytes=64 * 1024 * 1024, max_unpacked_bytes=256 * 1024 * 1024, max_files=10_000
    )


def test_a_release_is_unpacked_under_the_hex_of_its_archive_digest(tmp_path: Path) -> None:
    config = registry(max_archive_mb=2)
    fetcher = ReleaseFetcher(config, tmp_path, Trust(config.trusted), RegistryAccess())
    release = signed.release(KEY, signed.statement(digest="sha256:" + "0a" * 32))
    assert fetcher.tree(release) == tmp_path / "trees" / ("0a" * 32)
    assert fetcher.limits == unpack_limits(config)
    assert fetcher.fetched == 0
