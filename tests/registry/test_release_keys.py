"""Release keys can never double as NATS login keys: what a hostile server could do with a key a client logs in
with (have it sign a release statement as its login nonce) needs a key that logs in, and nats-server takes none of
the release keys' type for a user. Tried against a real nats-server, and at a loader's start."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
from pathlib import Path

import nats.errors
import nkeys
import pytest
from nats.aio.client import Client

from service.app.natsserver import NatsServer, free_port, nats_server_binary
from service.app.serve import build_releases
from service.contract.errors import ConfigError
from service.registry.signing import Signer, new_seed, verify, write_seed
from tests.app.test_cli import run
from tests.conftest import NU, make_config, registry_settings

pytestmark = pytest.mark.anyio


def user_seed() -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def test_nats_server_refuses_a_release_key_as_a_user_s_nkey(tmp_path: Path) -> None:
    release_key = Signer.from_seed(new_seed()).public_key
    conf = tmp_path / "server.conf"
    conf.write_text(f'port: {free_port()}\nauthorization {{ users = [{{ nkey: "{release_key}" }}] }}\n')
    done = subprocess.run(
        [nats_server_binary(), "-c", str(conf)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode != 0
    assert "Not a valid public nkey for a user" in done.stderr


async def test_a_release_seed_cannot_log_in_where_users_log_in_with_nkeys(tmp_path: Path) -> None:
    """The server's users are nkeys (a user key, U...); a client that signs its nonce with a release seed is
    refused, so no client is ever set up to log in with one, and none signs a hostile server's nonce with it."""
    user = nkeys.from_seed(user_seed())
    conf = tmp_path / "server.conf"
    public = bytes(user.public_key).decode()
    conf.write_text(f'port: -1\nauthorization {{ users = [{{ nkey: "{public}" }}] }}\n')
    seed_file = tmp_path / "release.nk"
    write_seed(seed_file)
    with NatsServer(["-c", str(conf)]) as server:

        async def quiet(exc: Exception) -> None:
            pass

        for seed in (seed_file, None):  # the release seed refused; the user's own seed (the control) logs in
            nc = Client()
            try:
                if seed is None:
                    user_file = tmp_path / "user.nk"
                    user_file.write_bytes(bytes(user.seed))
                    await nc.connect(server.url, nkeys_seed=str(user_file), allow_reconnect=False, error_cb=quiet)
                    assert nc.is_connected
                    continue
                with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                    await nc.connect(
                        server.url,
                        nkeys_seed=str(seed),
                        allow_reconnect=False,
                        max_reconnect_attempts=1,
                        connect_timeout=5,
                        error_cb=quiet,
                    )
            finally:
                await nc.close()


def test_a_nonce_signed_with_a_user_key_is_no_release_signature() -> None:
    """Even a user key that signed a nonce made to look like a statement gives no signature the loader takes: the
    key's type is refused before any signature is looked at."""
    user = nkeys.from_seed(user_seed())
    public = bytes(user.public_key).decode()
    nonce = b"DSSEv1 45 application/vnd.extension-loader.state.v1+json 2 {}"
    signature = base64.urlsafe_b64encode(bytes(user.sign(nonce))).rstrip(b"=").decode()
    with pytest.raises(Exception, match="is a NATS user key"):
        verify(public, nonce, signature)


async def test_a_user_key_pinned_as_a_release_signer_stops_the_start_saying_why_and_what_to_do() -> None:
    public = bytes(nkeys.from_seed(user_seed()).public_key).decode()
    code, _, err = await run(
        "serve",
        "--set",
        "registry.enabled=true",
        "--set",
        f'registry.trusted=[{{key = "{public}"}}]',
        "--set",
        f'nushell.path="{NU}"',
    )
    assert code == 2
    assert "registry.trusted.0.key" in err
    assert "is a NATS user key, which a client logs in with" in err
    assert "extension-loader keygen FILE" in err and "resign" in err


def test_a_user_key_is_pinned_only_with_the_old_format_accepted_which_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    public = bytes(nkeys.from_seed(user_seed()).public_key).decode()
    refused = make_config("nats://127.0.0.1:4222", tmp_path, overrides=registry_settings(public))
    with pytest.raises(ConfigError, match="is a NATS user key"):
        build_releases(refused)
    accepted = make_config("nats://127.0.0.1:4222", tmp_path, overrides=registry_settings(public, accept_v1=True))
    with caplog.at_level(logging.WARNING):
        assert build_releases(accepted) is not None
    assert "registry.accept_v1 is set" in caplog.text
