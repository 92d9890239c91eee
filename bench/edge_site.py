"""An edge deployment on this machine for the edge benchmarks: a hub of three clustered JetStream nodes (domain
`hub`) and one edge site (a leaf node with JetStream of its own, domain `site`), from the project's shipped files.

The hub's nodes are deploy/cluster's three files, each given deploy/edge/hub.conf's `leafnodes` block and the
`domain` line (as hub.conf's comment says to do on a cluster); the site is deploy/edge/site.conf, its remote listing
every hub node. All run from a work folder holding nats.conf two levels above them and the certificates
`extension-loader certs` makes, on free ports, with passwords of their own (the hub's and the site's differ). The
site reaches each hub node through a `Relay`, so the link can be cut while both sides run on. A node can be killed
(SIGKILL) or stopped, and started again on the same ports and store.

`set_up` runs `extension-loader setup` as each side's admin, as the files' comments run it: at the hub with three
replicas, at the site with `--site --hub-domain hub`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import nats
from nats.aio.client import Client

from service.app import certs
from service.app.natsserver import NatsServer, wait_settled
from service.contract.config import ENV_PREFIX, inbox_prefix_for
from service.registry.names import DEFAULT_NAMES

from .edge_relay import Relay, fresh_port
from .options import ROOT, BenchError
from .procs import Child

USERS = ("orchestrator", "loader", "observer", "publisher", "admin")
_VARIABLES = {user: f"NATS_{user.upper()}_PASSWORD" for user in USERS}
LEAF_PASSWORD = "k0leaf-bench"
REG_API, EVENTS_API = "$JS.reg.API", "$JS.events.API"
INDEX, ARCHIVES = DEFAULT_NAMES.index_stream, DEFAULT_NAMES.archive_stream
POLL_S = 0.05
SETTLE_S = 60.0
SETUP_TIMEOUT_S = 60.0


class Node:
    """One nats-server from a configuration file in the work folder; each start is a new process."""

    def __init__(self, folder: Path, conf: str, env: Mapping[str, str]) -> None:
        self.folder = folder
        self.conf = conf
        self.env = dict(env)
        self.server: NatsServer | None = None
        listen = re.search(r"^listen:\s*127\.0\.0\.1:(\d+)", (folder / conf).read_text(), re.M)
        assert listen is not None, f"{conf} has no listen line"
        self.port = int(listen.group(1))
        name = re.search(r"^server_name:\s*(\S+)", (folder / conf).read_text(), re.M)
        assert name is not None, f"{conf} has no server_name"
        self.name = name.group(1)
        self.starts = 0

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.running

    def start(self) -> NatsServer:
        self.server = NatsServer(["-c", self.conf], cwd=self.folder, env=self.env).start()
        self.starts += 1
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def kill(self) -> None:
        """SIGKILL: no goodbye to its peers, nothing flushed beyond what `sync_interval: always` wrote."""
        if self.server is not None and self.server.process is not None:
            self.server.process.kill()
            self.server.stop()

    def password(self, user: str) -> str:
        return self.env[_VARIABLES[user]]


class Edge:
    """The hub's three nodes, the site and the relays between them (`lay_out` makes the files)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        base = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", ENV_PREFIX))}
        hub_env = {**base, **{v: f"k{i}hub-bench" for i, v in enumerate(_VARIABLES.values())}}
        hub_env["NATS_LEAF_PASSWORD"] = LEAF_PASSWORD
        site_env = {**base, **{v: f"k{i}site-bench" for i, v in enumerate(_VARIABLES.values())}}
        leaf_ports = _lay_out(folder)
        self.hub = [Node(folder, f"deploy/cluster/node-{n}.conf", hub_env) for n in (1, 2, 3)]
        self.relays = [Relay(port) for port in leaf_ports]
        _write_site(folder, [r.port for r in self.relays])
        self.site = Node(folder, "deploy/edge/site.conf", site_env)

    @property
    def ca(self) -> Path:
        return self.folder / "data" / "certs" / certs.CA_CERT

    @property
    def hub_urls(self) -> list[str]:
        return [node.url for node in self.hub]

    def start(self) -> None:
        for relay in self.relays:
            relay.mend()
        try:
            for node in self.hub:
                node.start()
            self.wait_hub_settled(())
            self.site.start()
            self.wait_linked()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for relay in self.relays:
            relay.close()
        self.site.stop()
        for node in self.hub:
            node.stop()

    def cut(self) -> None:
        for relay in self.relays:
            relay.cut()

    def mend(self) -> None:
        for relay in self.relays:
            relay.mend()

    def leaf_links(self) -> int:
        """The leaf connections the site has now, as its monitoring says (0 while it cannot reach the hub)."""
        assert self.site.server is not None
        return int(self.site.server.monitor("leafz").get("leafnodes") or 0)

    def wait_linked(self, linked: bool = True, timeout: float = SETTLE_S) -> float:
        """Blocks until the site has a leaf link (`linked`) or none; returns the seconds that took. Each look is
        a request to the site's monitoring endpoint."""
        began = time.monotonic()
        while (self.leaf_links() > 0) != linked:
            if time.monotonic() - began > timeout:
                raise BenchError(f"the site's leaf link is {'not ' if linked else ''}up after {timeout} s")
            time.sleep(POLL_S)  # a poll interval between looks at the monitoring endpoint
        return time.monotonic() - began

    def wait_hub_settled(self, streams: Sequence[str] = (INDEX, ARCHIVES), timeout: float = SETTLE_S) -> None:
        """Blocks until the running hub nodes have a metadata leader, and each of `streams` a leader, with the
        others current."""
        servers = {node.name: node.server for node in self.hub if node.running and node.server}
        wait_settled(servers, streams, timeout)

    async def connect(self, urls: str | Sequence[str], user: str, *, node: Node, name: str) -> Client:
        """`user` of `node`'s side over TLS trusting the deployment's CA, with its own inbox prefix; it reconnects
        for as long as it lives (a hub node may be down a while)."""

        async def quiet(exc: Exception) -> None:
            pass

        return await nats.connect(
            [urls] if isinstance(urls, str) else list(urls),
            user=user,
            password=node.password(user),
            inbox_prefix=inbox_prefix_for(user),
            tls=ssl.create_default_context(cafile=str(self.ca)),
            name=name,
            connect_timeout=5,
            reconnect_time_wait=0.5,
            max_reconnect_attempts=-1,
            error_cb=quiet,
        )

    async def set_up(self) -> list[str]:
        """`extension-loader setup` at the hub (three replicas), then `setup --site --hub-domain hub` at the
        site, each as its admin: the lines they printed."""
        lines = await self.set_up_node(self.hub[0], "--replicas", "3")
        return lines + await self.set_up_node(self.site, "--site", "--hub-domain", "hub")

    async def set_up_node(self, node: Node, *more: str) -> list[str]:
        """`extension-loader setup [more]` on one node as its admin."""
        env = {k: v for k, v in os.environ.items() if not k.startswith((ENV_PREFIX, "NATS_"))}
        env |= {"NATS_PASSWORD": node.password("admin"), f"{ENV_PREFIX}EVENTS__API_PREFIX": EVENTS_API}
        exe = Path(sys.executable).with_name("extension-loader")
        argv = [str(exe), "setup", *more, "--server", node.url, "--tls-ca", str(self.ca), "--user", "admin"]
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), SETUP_TIMEOUT_S)
        if process.returncode != 0:
            raise BenchError(f"setup {' '.join(more)} at {node.conf} failed ({process.returncode}): {err.decode()}")
        return out.decode().splitlines()


async def stop_all(tasks: Iterable[asyncio.Task[object]], children: Sequence[Child], clients: Iterable[Client]) -> None:
    """What a run at the edge started, stopped: its tasks cancelled (all of them, then each awaited), its loaders
    stopped in the reverse order of their starts, its connections closed. The servers are the caller's."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for child in reversed(children):
        await asyncio.to_thread(child.stop)
    for nc in clients:
        with contextlib.suppress(Exception):
            await nc.close()


def _lay_out(folder: Path) -> list[int]:
    """nats.conf, the certificates and the hub's three node files in `folder`; the nodes' leaf-node ports."""
    certs.ensure(folder / "data" / "certs", ["localhost", "127.0.0.1"])
    (folder / "nats.conf").write_text((ROOT / "nats.conf").read_text())
    hub_conf = (ROOT / "deploy" / "edge" / "hub.conf").read_text()
    leafnodes = re.search(r"^leafnodes \{.*?^\}", hub_conf, re.M | re.S)
    if leafnodes is None:
        raise BenchError("deploy/edge/hub.conf has no leafnodes block")
    (folder / "deploy" / "cluster").mkdir(parents=True)
    ports: dict[str, str] = {}
    leaf_ports: list[int] = []
    for n in (1, 2, 3):
        text = (ROOT / "deploy" / "cluster" / f"node-{n}.conf").read_text()
        text = _moved(text, ports)
        text, found = re.subn(r"^jetstream \{\n", "jetstream {\n  domain: hub\n", text, flags=re.M)
        if found != 1:
            raise BenchError(f"deploy/cluster/node-{n}.conf has no jetstream block")
        leaf_ports.append(fresh_port())
        block = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{leaf_ports[-1]}", leafnodes.group(0))
        (folder / "deploy" / "cluster" / f"node-{n}.conf").write_text(f"{text}\n{block}\n")
    return leaf_ports


def _write_site(folder: Path, relay_ports: Sequence[int]) -> None:
    """deploy/edge/site.conf on free ports, its remote listing the relay to each hub node."""
    text = _moved((ROOT / "deploy" / "edge" / "site.conf").read_text(), {})
    urls = ", ".join(f'"nats-leaf://leaf_site:{LEAF_PASSWORD}@127.0.0.1:{port}"' for port in relay_ports)
    text, found = re.subn(r"^(\s*)url: \$NATS_HUB_LEAF_URL.*$", rf"\1urls: [{urls}]", text, flags=re.M)
    if found != 1:
        raise BenchError("deploy/edge/site.conf has no `url: $NATS_HUB_LEAF_URL` remote")
    (folder / "deploy" / "edge").mkdir(parents=True, exist_ok=True)
    (folder / "deploy" / "edge" / "site.conf").write_text(text)


def write_twin(folder: Path) -> str:
    """The site's file without its leaf link, on ports and a store of its own: a server configured as the site
    but alone (`deploy/edge/twin.conf`), for loads from disk beside the site's loads from its mirrors."""
    text = _moved((ROOT / "deploy" / "edge" / "site.conf").read_text(), {})
    text = re.sub(r"^leafnodes \{.*?^\}\n?", "", text, flags=re.M | re.S)
    text = text.replace("jetstream-site", "jetstream-twin").replace("extension-loader-site", "extension-loader-twin")
    text = re.sub(r"^(\s*)domain: site", r"\1domain: twin", text, flags=re.M)
    (folder / "deploy" / "edge").mkdir(parents=True, exist_ok=True)
    (folder / "deploy" / "edge" / "twin.conf").write_text(text)
    return "deploy/edge/twin.conf"


def _moved(text: str, ports: dict[str, str]) -> str:
    """Every loopback port moved to a free one; the same port in several files moves to the same free one."""
    return re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports.setdefault(m[1], str(fresh_port()))}", text)
