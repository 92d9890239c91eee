"""The registry commands as a person runs them: `keygen`, `setup` (which alone makes the buckets), `publish`,
`yank`, `search`, and `discover` showing where each version comes from, against a real JetStream nats-server and
a real loader."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client

from service.app.natsserver import NatsServer
from tests.app.test_cli import cli, run
from tests.conftest import NU, make_config, registry_settings, running_service, write_extension

pytestmark = pytest.mark.anyio


async def keygen(path: Path) -> str:
    code, out, err = await run("keygen", str(path))
    assert code == 0, err
    return out.strip()


async def test_keygen_writes_a_private_seed_and_never_overwrites_one(tmp_path: Path) -> None:
    key = tmp_path / "publisher.nk"
    code, out, err = await run("keygen", str(key))
    assert code == 0, err
    public = out.strip()
    assert public.startswith("O") and len(public) == 56  # an operator-type nkey: never a NATS login
    assert f'key = "{public}"' in err
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("SO")
    code, _, err = await run("keygen", str(key))
    assert code == 2 and str(key) in err
    assert key.read_text().startswith("SO")


async def test_publish_search_yank_and_discover(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    key = tmp_path / "publisher.nk"
    public = await keygen(key)
    checkout = tmp_path / "checkout"
    first = write_extension(checkout, "taskserv", "vault", "1.0.0")
    second = write_extension(checkout / "next", "taskserv", "vault", "1.1.0")
    nu = ("--set", f'nushell.path="{NU}"')

    code, _, err = await cli(nats_server, "setup")
    assert code == 0, err
    code, out, err = await cli(nats_server, "publish", str(first), "--key", str(key), *nu)
    assert code == 0, err
    assert "warning" not in err
    assert out.startswith("published taskserv vault 1.0.0: ") and public in out
    code, out, err = await cli(nats_server, "publish", str(second), "--key", str(key), *nu, "--json")
    assert code == 0, err
    assert json.loads(out)["version"] == "1.1.0" and json.loads(out)["signer"] == public

    code, _, err = await cli(nats_server, "publish", str(first), "--key", str(key), *nu)
    assert code == 1 and "already published" in err

    code, out, _ = await cli(nats_server, "search", "VAULT")
    assert code == 0 and out.splitlines()[1].split()[:4] == ["taskserv", "vault", "1.1.0", "2"]
    code, out, _ = await cli(nats_server, "search", "no-such-thing")
    assert code == 0 and "nothing in the registry matches" in out

    code, out, err = await cli(nats_server, "yank", "taskserv", "vault", "1.1.0", "--key", str(key))
    assert code == 0 and out.strip() == "yanked taskserv vault 1.1.0", err
    code, _, err = await cli(nats_server, "yank", "taskserv", "vault", "9.9.9", "--key", str(key))
    assert code == 1 and "not in the registry" in err
    code, out, _ = await cli(nats_server, "search", "vault", "--json")
    assert json.loads(out)[0]["latest"] == "1.0.0"

    empty = tmp_path / "none"
    empty.mkdir()
    config = make_config(nats_server.url, tmp_path, roots=[empty], overrides=registry_settings(public))
    async with running_service(config):
        code, out, _ = await cli(nats_server, "discover", "taskserv", "vault")
        assert code == 0
        assert out.splitlines()[1].split()[2:6] == ["1.1.0", "(registry,", "yanked),", "1.0.0"]
        code, out, _ = await cli(nats_server, "stats")
        assert "registry: reachable; 1 extension, 2 versions in the index" in out


async def test_publish_refuses_a_folder_that_would_not_load(nats_server: NatsServer, tmp_path: Path) -> None:
    key = tmp_path / "publisher.nk"
    await keygen(key)
    broken = write_extension(tmp_path / "c", "taskserv", "broken", "1.0.0", module="export def oops [ {\n")
    code, _, err = await cli(nats_server, "publish", str(broken), "--key", str(key), "--set", f'nushell.path="{NU}"')
    assert code == 1 and "mod.nu" in err
    code, _, err = await cli(nats_server, "publish", str(tmp_path), "--key", str(key))
    assert code == 1 and "metadata.toml" in err
    await anyio.Path(key).chmod(0o644)
    code, _, err = await cli(nats_server, "publish", str(broken), "--key", str(key))
    assert code == 2 and "chmod 600" in err


async def test_a_mistyped_trusted_key_stops_the_loader_at_start(tmp_path: Path) -> None:
    key = tmp_path / "publisher.nk"
    public = await keygen(key)
    typo = public[:10] + ("A" if public[10] != "A" else "B") + public[11:]
    code, _, err = await run(
        "serve",
        "--set",
        "registry.enabled=true",
        "--set",
        f'registry.trusted=[{{key = "{typo}"}}]',
        "--set",
        f'nushell.path="{NU}"',
    )
    assert code == 2 and "registry.trusted.0.key" in err


async def test_publish_yank_and_search_before_setup_say_to_run_it_and_create_nothing(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    key = tmp_path / "publisher.nk"
    await keygen(key)
    folder = write_extension(tmp_path / "checkout", "taskserv", "vault", "1.0.0")
    for command in (
        ("publish", str(folder), "--key", str(key), "--set", f'nushell.path="{NU}"'),
        ("yank", "taskserv", "vault", "1.0.0", "--key", str(key)),
        ("search", "vault"),
    ):
        code, out, err = await cli(nats_server, *command)
        assert code == 4, (command, out, err)
        assert "not on this server: run `extension-loader setup` (as admin)" in err, err
    assert await nc.jetstream().streams_info() == []


async def test_publish_warns_of_a_bucket_that_would_lose_published_versions(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    """An index bucket someone made by hand with a time to live: the publish goes through, and says so (the
    loader says it too, in its log); `setup` takes the ttl away."""
    key = tmp_path / "publisher.nk"
    await keygen(key)
    await nc.jetstream().create_key_value(bucket="extension-index", ttl=3600)
    await nc.jetstream().create_object_store("extension-archives")
    folder = write_extension(tmp_path / "checkout", "taskserv", "vault", "1.0.0")
    code, _, err = await cli(nats_server, "publish", str(folder), "--key", str(key), "--set", f'nushell.path="{NU}"')
    assert code == 0, err
    assert "warning: registry: stream KV_extension-index deletes what is older than 3600 s" in err
    assert "`extension-loader setup` removes the ttl" in err
