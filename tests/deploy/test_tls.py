"""TLS where traffic leaves the machine: `extension-loader certs` and the configurations that use what it makes.

Real nats-servers with the certificates the command makes: a client that trusts its CA is served (nats-py, the
service with nats.tls_ca, the command line with --tls-ca and NATS_CA); one that trusts another CA, dials a name
the certificate does not carry, or speaks no TLS at all is refused. The command keeps what is good and renews
what is not, saying why; its key files are their owner's alone. The three nodes of deploy/cluster form a cluster
over TLS routes with the certificates its comment says how to make, and a node with another CA's certificate
cannot join; deploy/nats.container.conf, laid out as docker-compose.yml mounts it, serves the names the
containers and the host dial.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import msgspec
import nats
import pytest
from cryptography import x509
from nats.aio.client import Client

from service.app import certs
from service.app.cli import main
from service.app.natsserver import NatsServer, free_port
from tests.conftest import WAIT, make_config, running_service
from tests.deploy.test_compose import (
    ADMIN_PASSWORD,
    PASSWORD_VARIABLES,
    compose_service,
    environment,
    fill_certs_volume,
    interpolate,
    lay_out_nats_container,
    loader_in_container,
)

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "cluster"
PASSWORDS = {name: f"k{i}tls" for i, name in enumerate((*PASSWORD_VARIABLES, ADMIN_PASSWORD))}
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
# nats.conf's user for people, logging in over TLS where nats.conf's users apply (the cluster, compose's nats).
AS_ORCHESTRATOR = {
    "user": "orchestrator",
    "password": PASSWORDS["NATS_ORCHESTRATOR_PASSWORD"],
    "inbox_prefix": "_INBOX.orchestrator",
}


def make_certs(folder: Path, *args: str, capsys: pytest.CaptureFixture[str] | None = None) -> str:
    """`extension-loader certs FOLDER ARGS...`, as a person runs it; what it printed (with `capsys`)."""
    assert main(["certs", str(folder), *args]) == 0
    return capsys.readouterr().out if capsys is not None else ""


def tls_conf(folder: Path, made: Path, store: Path) -> Path:
    """A nats-server configuration on a free loopback port whose clients must speak TLS, with `made`'s files."""
    conf = folder / "tls.conf"
    conf.write_text(
        "listen: 127.0.0.1:-1\n"
        "http: 127.0.0.1:-1\n"
        f'jetstream {{ store_dir: "{store}" }}\n'
        "tls {\n"
        f'  cert_file: "{made / certs.SERVER_CERT}"\n'
        f'  key_file: "{made / certs.SERVER_KEY}"\n'
        f'  ca_file: "{made / certs.CA_CERT}"\n'
        "  timeout: 2\n"
        "}\n"
    )
    return conf


@pytest.fixture
def made(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    make_certs(folder)
    return folder


@pytest.fixture
def server(tmp_path: Path, made: Path) -> Iterator[NatsServer]:
    with NatsServer(["-c", str(tls_conf(tmp_path, made, tmp_path / "jetstream"))]) as running:
        yield running


def trusting(folder: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(folder / certs.CA_CERT))


@asynccontextmanager
async def connected(url: str, **options: Any) -> AsyncIterator[Client]:
    nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=5, **options)
    try:
        yield nc
    finally:
        await nc.close()


async def refused(url: str, **options: Any) -> BaseException:
    """The error nats-py's connect raises (its error callback sees the same), with one attempt."""
    seen: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        seen.append(exc)

    with pytest.raises(Exception) as raised:  # which error is the point: the caller checks it
        async with connected(url, error_cb=on_error, **options):
            pass
    assert seen, "the error callback saw nothing"
    return raised.value


async def round_trip(nc: Client) -> None:
    sub = await nc.subscribe("tls.check")
    await nc.publish("tls.check", b"over TLS")
    msg = await sub.next_msg(timeout=WAIT)
    assert msg.data == b"over TLS"


def wait_until(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Asks `check` again (each look a request to a monitoring endpoint) until it holds; no sleep."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")


# --- a server with the certificates the command makes ----------------------------------------------------------


@pytest.mark.anyio
async def test_a_client_that_trusts_the_ca_is_served_over_tls(server: NatsServer, made: Path) -> None:
    for host in ("127.0.0.1", "localhost"):
        async with connected(f"tls://{host}:{server.port}", tls=trusting(made)) as nc:
            await round_trip(nc)
            (conn,) = [c for c in server.monitor("connz")["connections"] if c["cid"] == nc.client_id]
            assert conn["tls_version"].startswith("1."), conn  # the connection the server has with it is TLS
    assert server.monitor("varz")["tls_required"] is True


@pytest.mark.anyio
async def test_a_client_that_trusts_another_ca_is_refused(server: NatsServer, tmp_path: Path) -> None:
    make_certs(tmp_path / "other")
    error = await refused(f"tls://127.0.0.1:{server.port}", tls=trusting(tmp_path / "other"))
    assert isinstance(error, ssl.SSLCertVerificationError) and "certificate verify failed" in str(error), error
    await anyio.to_thread.run_sync(server.wait_for_log, "TLS handshake error")


@pytest.mark.anyio
async def test_a_name_the_certificate_does_not_carry_is_refused(server: NatsServer, made: Path) -> None:
    """The CA is right, but a client that dials another name does not take this certificate for that server."""
    url = f"tls://127.0.0.1:{server.port}"
    error = await refused(url, tls=trusting(made), tls_hostname="elsewhere.example")
    assert isinstance(error, ssl.SSLCertVerificationError) and "elsewhere.example" in str(error), error
    async with connected(url, tls=trusting(made), tls_hostname="nats") as nc:  # a name it carries
        await round_trip(nc)


@pytest.mark.anyio
async def test_a_client_without_tls_is_refused(server: NatsServer) -> None:
    """A client that answers the server's greeting in plain text gets no PONG: the server wanted a TLS handshake,
    and closes the connection before it reads a password."""
    async with await anyio.connect_tcp("127.0.0.1", server.port) as plain:
        greeting = b""
        with anyio.fail_after(WAIT):
            while not greeting.endswith(b"\r\n"):
                greeting += await plain.receive()
        info = msgspec.json.decode(greeting.removeprefix(b"INFO ").strip())
        assert info["tls_required"] is True
        await plain.send(b'CONNECT {"verbose":false,"pedantic":false,"tls_required":false}\r\nPING\r\n')
        answered = b""
        with anyio.fail_after(WAIT):
            try:
                while True:
                    answered += await plain.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                pass
    assert b"PONG" not in answered and b"+OK" not in answered
    assert server.monitor("connz")["num_connections"] == 0


@pytest.mark.anyio
async def test_the_service_and_the_command_line_trust_the_made_ca(
    server: NatsServer, made: Path, tmp_path: Path
) -> None:
    """The loader with nats.tls_ca, and `extension-loader` with NATS_CA or --tls-ca: served with this CA; with
    another, the command line ends at once with the verification error."""
    url = f"tls://127.0.0.1:{server.port}"
    config = make_config(url, tmp_path, overrides={"nats.tls_ca": str(made / certs.CA_CERT)})
    make_certs(tmp_path / "other")
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_USER", "NATS_PASSWORD", "NATS_CA", "NATS_URL")}
    cli = [str(Path(sys.executable).with_name("extension-loader")), "stats", "--server", url, "--json"]
    async with running_service(config) as service:
        for how, extra, variables in (
            ("NATS_CA", [], {"NATS_CA": str(made / certs.CA_CERT)}),
            ("--tls-ca", ["--tls-ca", str(made / certs.CA_CERT)], {}),
        ):
            with anyio.fail_after(WAIT):
                done = await anyio.run_process([*cli, *extra], env={**env, **variables}, check=False)
            assert done.returncode == 0, (how, done.stderr.decode())
            assert msgspec.json.decode(done.stdout)["instance_id"] == service.identity.id
            assert done.stderr == b"", (how, done.stderr.decode())  # nothing said about closing the connection
        with anyio.fail_after(WAIT):
            wrong = await anyio.run_process(
                [*cli, "--tls-ca", str(tmp_path / "other" / certs.CA_CERT)], env=env, check=False
            )
    assert wrong.returncode == 4, wrong.stderr.decode()
    assert "CERTIFICATE_VERIFY_FAILED" in wrong.stderr.decode()


# --- the command: idempotent, renews what is not good, keys 0600 ------------------------------------------------


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def names_and_issuer(folder: Path) -> tuple[list[str], x509.Certificate]:
    server = x509.load_pem_x509_certificate((folder / certs.SERVER_CERT).read_bytes())
    ca = x509.load_pem_x509_certificate((folder / certs.CA_CERT).read_bytes())
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    return certs.describe(folder).partition(", valid until")[0].split(", "), server


def test_certs_makes_what_is_missing_then_keeps_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "certs"
    first = make_certs(folder, capsys=capsys)
    assert f"made {certs.CA_CERT} and {certs.CA_KEY}: missing" in first
    assert f"made {certs.SERVER_CERT} and {certs.SERVER_KEY}: missing" in first
    names, _ = names_and_issuer(folder)
    assert names == ["localhost", "nats", "127.0.0.1", "::1"]  # certs.DEFAULT_HOSTS, DNS names first
    before = contents(folder)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = make_certs(folder, capsys=capsys)
    assert "kept the CA and the server certificate" in again and "made" not in again and "renewed" not in again
    assert contents(folder) == before
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps, "a kept file was written again"


def test_key_files_are_the_owners_alone_whatever_the_umask(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    old = os.umask(0)
    try:
        make_certs(folder)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes == {certs.CA_CERT: 0o644, certs.CA_KEY: 0o600, certs.SERVER_CERT: 0o644, certs.SERVER_KEY: 0o600}
    # A key opened to others (copied in by hand, say) is closed again, and kept.
    before = contents(folder)
    (folder / certs.SERVER_KEY).chmod(0o644)
    assert certs.ensure(folder) == []
    assert (folder / certs.SERVER_KEY).stat().st_mode & 0o777 == 0o600 and contents(folder) == before


def other_pair(tmp_path: Path) -> Path:
    folder = tmp_path / "other"
    certs.ensure(folder, now=T0)
    return folder


def lose_the_server_key(folder: Path, other: Path) -> None:
    (folder / certs.SERVER_KEY).unlink()


def bring_another_cas_server_pair(folder: Path, other: Path) -> None:
    for name in (certs.SERVER_CERT, certs.SERVER_KEY):
        shutil.copy(other / name, folder / name)


def bring_another_server_key(folder: Path, other: Path) -> None:
    shutil.copy(other / certs.SERVER_KEY, folder / certs.SERVER_KEY)


def spoil_the_ca_certificate(folder: Path, other: Path) -> None:
    (folder / certs.CA_CERT).write_text("not a certificate\n")


def lose_the_ca_key(folder: Path, other: Path) -> None:
    (folder / certs.CA_KEY).unlink()


def bring_a_server_certificate_as_the_ca(folder: Path, other: Path) -> None:
    for name, into in ((certs.SERVER_CERT, certs.CA_CERT), (certs.SERVER_KEY, certs.CA_KEY)):
        shutil.copy(other / name, folder / into)


# Each case changes the folder as found (given another folder of the command's files), then says which pairs
# must be made anew and the words of the first reason.
CASES: dict[str, tuple[Callable[[Path, Path], None], set[str], str]] = {
    "server key missing": (lose_the_server_key, {certs.SERVER_CERT}, f"{certs.SERVER_KEY} missing"),
    "server certificate of another CA": (
        bring_another_cas_server_pair,
        {certs.SERVER_CERT},
        f"not signed by the CA in {certs.CA_CERT}",
    ),
    "server key of another certificate": (
        bring_another_server_key,
        {certs.SERVER_CERT},
        f"{certs.SERVER_KEY} is not the key of {certs.SERVER_CERT}",
    ),
    "CA certificate unreadable": (
        spoil_the_ca_certificate,
        {certs.CA_CERT, certs.SERVER_CERT},
        f"{certs.CA_CERT} is not a PEM certificate",
    ),
    "CA key missing": (lose_the_ca_key, {certs.CA_CERT, certs.SERVER_CERT}, f"{certs.CA_KEY} missing"),
    "CA that is no CA": (
        bring_a_server_certificate_as_the_ca,
        {certs.CA_CERT, certs.SERVER_CERT},
        f"{certs.CA_CERT} is not a CA certificate",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_certs_renews_what_no_longer_fits_and_says_why(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "certs"
    certs.ensure(folder, now=T0)
    before = contents(folder)
    change, renewed, reason = CASES[case]
    change(folder, other_pair(tmp_path))
    made = certs.ensure(folder, now=T0)
    assert {r.files[0] for r in made} == renewed, made
    assert reason in str(made[0]), made
    if certs.CA_CERT in renewed:
        assert str(made[1]).endswith("the CA is new")
    else:
        assert contents(folder)[certs.CA_CERT] == before[certs.CA_CERT], "the CA was kept"
    names, _ = names_and_issuer(folder)
    assert set(names) == set(certs.DEFAULT_HOSTS)


def test_certs_renews_before_expiry_and_for_other_host_names(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    # A CA for ten years, a server certificate for 60 days (made again once it was gone).
    certs.ensure(folder, days=3650, now=T0)
    (folder / certs.SERVER_CERT).unlink()
    certs.ensure(folder, days=60, now=T0)
    ca = contents(folder)[certs.CA_CERT]
    # 29 days on, 31 are left: kept. 31 days on, 29 are left: renewed, the CA kept.
    assert certs.ensure(folder, days=60, now=T0 + dt.timedelta(days=29)) == []
    (renewal,) = certs.ensure(folder, days=60, now=T0 + dt.timedelta(days=31))
    assert renewal.files == (certs.SERVER_CERT, certs.SERVER_KEY)
    assert renewal.reason == f"expires on {T0 + dt.timedelta(days=60):%Y-%m-%d}, within 30 days", renewal
    _, server = names_and_issuer(folder)
    assert server.not_valid_after_utc == T0 + dt.timedelta(days=91) and contents(folder)[certs.CA_CERT] == ca
    # Other names: renewed for exactly those.
    (renewal,) = certs.ensure(folder, ["nats", "node-2.example", "10.0.0.2"], now=T0 + dt.timedelta(days=31))
    assert "not nats, node-2.example, 10.0.0.2" in renewal.reason
    assert names_and_issuer(folder)[0] == ["nats", "node-2.example", "10.0.0.2"]
    # The CA near its end: both made anew, the server certificate never outliving its CA.
    ca_end = T0 + dt.timedelta(days=3650)
    made = certs.ensure(folder, ["nats"], days=400, now=ca_end - dt.timedelta(days=10))
    assert [r.files[0] for r in made] == [certs.CA_CERT, certs.SERVER_CERT]
    assert made[0].reason.startswith(f"expires on {ca_end:%Y-%m-%d}") and made[1].reason == "the CA is new"
    # Expired outright: said so.
    (folder / certs.SERVER_KEY).unlink()
    certs.ensure(folder, ["nats"], days=40, now=ca_end)
    (renewal,) = certs.ensure(folder, ["nats"], days=40, now=ca_end + dt.timedelta(days=41))
    assert renewal.reason == f"expired on {ca_end + dt.timedelta(days=40):%Y-%m-%d}"
    assert renewal.files[0] == certs.SERVER_CERT


@pytest.mark.anyio
async def test_a_renewed_certificate_is_served_and_the_command_says_what_it_renewed(
    tmp_path: Path, made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    (made / certs.SERVER_KEY).unlink()
    out = make_certs(made, "--host", "127.0.0.1", capsys=capsys)
    assert f"renewed {certs.SERVER_CERT} and {certs.SERVER_KEY}: {certs.SERVER_KEY} missing" in out
    assert "127.0.0.1, valid until" in out
    with NatsServer(["-c", str(tls_conf(tmp_path, made, tmp_path / "jetstream"))]) as server:
        async with connected(f"tls://127.0.0.1:{server.port}", tls=trusting(made)) as nc:
            await round_trip(nc)


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--days", "30"], "give more than 30 days"),
        (["--days", "many"], "not a whole number"),
        (["--host", "two words"], "neither a host name nor an IP address"),
        (["--host", "bad_name.example"], "neither a host name nor an IP address"),
    ],
)
def test_certs_refuses_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["certs", str(tmp_path / "certs"), *args])
    assert exited.value.code == 2 and complaint in capsys.readouterr().err
    assert not (tmp_path / "certs").exists()


def test_certs_in_a_folder_it_cannot_write_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("in the way\n")
    assert main(["certs", str(tmp_path / "file" / "certs")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'file' / 'certs'}:")


# --- deploy/cluster: three nodes over TLS routes -----------------------------------------------------------------


def documented_certs_command() -> list[str]:
    """The `extension-loader certs ...` command that the comment atop each node's file gives (the same in all)."""
    found: set[tuple[str, ...]] = set()
    for n in (1, 2, 3):
        text = (CLUSTER / f"node-{n}.conf").read_text()
        found.update(tuple(m.split()) for m in re.findall(r"^#\s+\S*extension-loader (certs .+)$", text, re.M))
    assert len(found) == 1, f"the node files give different certs commands, or none: {found}"
    return list(found.pop())


@contextmanager
def cluster_from_the_deploy_files(folder: Path) -> Iterator[list[NatsServer]]:
    """deploy/cluster's three files run as documented: from a folder holding nats.conf two levels above them,
    with the certificates the comment's command makes there; only the ports are moved to free ones."""
    argv = documented_certs_command()
    assert argv[0] == "certs" and not Path(argv[1]).is_absolute()
    assert main([argv[0], str(folder / argv[1]), *argv[2:]]) == 0
    shutil.copy(ROOT / "nats.conf", folder / "nats.conf")
    (folder / "deploy" / "cluster").mkdir(parents=True)
    ports: dict[str, str] = {}
    for n in (1, 2, 3):
        text = (CLUSTER / f"node-{n}.conf").read_text()
        moved = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports.setdefault(m[1], str(free_port()))}", text)
        (folder / "deploy" / "cluster" / f"node-{n}.conf").write_text(moved)
    env = {**os.environ, **PASSWORDS}
    nodes = [NatsServer(["-c", f"deploy/cluster/node-{n}.conf"], cwd=folder, env=env) for n in (1, 2, 3)]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def route_peers(node: NatsServer) -> set[str]:
    return {route["remote_name"] for route in node.monitor("routez")["routes"]}


def routes_exactly(node: NatsServer, others: set[str]) -> Callable[[], bool]:
    return lambda: route_peers(node) == others


def meta_group_current(nodes: list[NatsServer]) -> bool:
    """One node leads JetStream's metadata group, and its report shows both others current with it."""
    for node in nodes:
        report = node.monitor("jsz")
        meta = report.get("meta_cluster", {})
        if meta.get("leader") == report.get("server_name") or meta.get("leader") == node.monitor("varz")["server_name"]:
            replicas = meta.get("replicas") or []
            return len(replicas) == 2 and all(r.get("current") for r in replicas)
    return False


@pytest.mark.anyio
async def test_the_cluster_forms_over_tls_routes_that_verify_the_peer(tmp_path: Path) -> None:
    with cluster_from_the_deploy_files(tmp_path) as nodes:
        names = {node.monitor("varz")["server_name"] for node in nodes}
        for node in nodes:
            mine = node.monitor("varz")
            assert mine["tls_required"] is True  # clients
            assert mine["cluster"]["tls_required"] is True and mine["cluster"]["tls_verify"] is True  # routes
            assert mine["jetstream"]["config"]["sync_always"] is True
            others = names - {mine["server_name"]}
            wait_until(f"{mine['server_name']} routes to {others}", routes_exactly(node, others))
        # JetStream's metadata group (a Raft group of all three, with a leader current with both others) runs over
        # those routes: messages flow each way between every two nodes.
        wait_until("a JetStream metadata leader current with both others", lambda: meta_group_current(nodes))

        # A client over TLS, trusting the CA, logs in on each node.
        for node in nodes:
            async with connected(
                f"tls://127.0.0.1:{node.port}", tls=trusting(tmp_path / "data" / "certs"), **AS_ORCHESTRATOR
            ) as nc:
                await nc.flush()

        # A node whose certificate another CA signed cannot route itself in.
        other = tmp_path / "other"
        make_certs(other)
        intruder = tmp_path / "intruder.conf"
        intruder.write_text(
            "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nserver_name: intruder\n"
            f"cluster {{\n  name: {nodes[0].monitor('varz')['cluster']['name']}\n  listen: 127.0.0.1:-1\n"
            f"  routes: [nats-route://127.0.0.1:{nodes[0].monitor('varz')['cluster']['cluster_port']}]\n"
            f'  tls {{ cert_file: "{other / certs.SERVER_CERT}", key_file: "{other / certs.SERVER_KEY}", '
            f'ca_file: "{other / certs.CA_CERT}", verify: true, timeout: 2 }}\n}}\n'
        )
        with NatsServer(["-c", str(intruder)]) as outsider:
            await anyio.to_thread.run_sync(outsider.wait_for_log, "TLS route handshake error")
            await anyio.to_thread.run_sync(nodes[0].wait_for_log, "TLS route handshake error")
            assert "intruder" not in route_peers(nodes[0]) and route_peers(outsider) == set()


# --- deploy/nats.container.conf as docker-compose.yml runs it ----------------------------------------------------


@pytest.mark.anyio
async def test_the_compose_nats_serves_tls_to_the_loaders_and_the_host(tmp_path: Path) -> None:
    """The nats container's files laid out here (the certs volume filled by the certs service's own command), the
    server run on free loopback ports: the loader, with its container's configuration, is served when it dials
    `nats`; a person on the host dials the published 127.0.0.1 with the CA; JetStream fsyncs every write."""
    volume = fill_certs_volume(tmp_path / "volumes")
    _, here = lay_out_nats_container(tmp_path / "nats", volume)
    here.write_text(here.read_text().replace("0.0.0.0:", "127.0.0.1:"))  # nothing of the test beyond loopback
    with NatsServer(["-c", str(here), "-p", "-1", "-m", "-1"], env={**os.environ, **PASSWORDS}) as server:
        assert server.monitor("varz")["jetstream"]["config"]["sync_always"] is True
        env = {k: interpolate(v, PASSWORDS) for k, v in environment(compose_service("loader")).items()}
        options: Mapping[str, Any] = loader_in_container(env, volume).nats.credentials()
        (dialed,) = [urlsplit(u) for u in options["servers"]]
        assert (dialed.scheme, dialed.hostname) == ("tls", "nats")
        loader = {k: v for k, v in options.items() if k != "servers"}
        async with connected(f"tls://127.0.0.1:{server.port}", tls_hostname=dialed.hostname, **loader) as nc:
            await nc.flush()
            assert nc.is_connected
        published = compose_service("nats")["ports"][0].rsplit(":", 2)[0]
        async with connected(f"tls://{published}:{server.port}", tls=trusting(volume), **AS_ORCHESTRATOR) as person:
            await person.flush()
