"""Fixtures: a real nats-server on a free loopback port, real Nushell, the service in the test's own task.

Nothing here is mocked. `nats_server` starts `nats-server -p -1` and waits for its "Server is ready" line
(`js_cluster` starts three, clustered with JetStream); `js_server` is a JetStream server that can be stopped,
killed or paused and started again on its port and store; `running_service` enters the real `ExtensionService`
against it; `events` subscribes before a test acts and lets it wait for what arrives, with a bounded time-out,
never a sleep.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.app.client import LoaderClient
from service.app.natsserver import NatsCluster, NatsServer
from service.app.publishing import prepare, publish
from service.app.serve import build_manager, service_version
from service.app.setup import Outcome, Status, set_up
from service.app.stream_settings import targets
from service.contract.config import Config, load_config
from service.notify import Notifier
from service.registry.buckets import RegistryBuckets
from service.registry.index import Release
from service.registry.signing import Signer, read_seed, write_seed
from service.runtime.runner import MODULE
from service.wire.service import ExtensionService, flush_subscriptions

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "extensions"
NU = ROOT / "node_modules" / "@nushell" / "linux-x64" / "bin" / "nu"
WAIT = 20.0  # the bound on any wait for something that should happen
# What examples/extensions/taskservs/kubernetes/1.28.0/metadata.toml says, as a load reports it.
KUBERNETES_1_28 = {
    "name": "kubernetes",
    "version": "1.28.0",
    "description": "Kubernetes container orchestrator",
    "extension_type": "taskserv",
    "dependencies": ["containerd@^1.7", "etcd@>=3.5"],
    "author": "provisioning-team",
    "repository": "https://github.com/provisioning/taskserv-kubernetes",
}


def project_requirements(extras: Iterable[str] | None = None) -> list[Requirement]:
    """What `pip install '.[extras]'` asks for, by pyproject.toml: the dependencies, then those of each extra
    (following an extra that names the project's own extras); `None`: every extra."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        project = tomllib.load(fh)["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out = [Requirement(text) for text in project["dependencies"]]
    todo, seen = list(optional if extras is None else extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in optional, f"pyproject.toml has no extra {extra!r}"
        for req in map(Requirement, optional[extra]):
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                todo += req.extras
            else:
                out.append(req)
    return out


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def js_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three clustered nats-servers with JetStream on free loopback ports (`node-1` .. `node-3`), ready once
    JetStream has a metadata leader current with the two others."""
    with NatsCluster(tmp_path / "cluster", 3) as cluster:
        yield cluster


async def lead(cluster: NatsCluster, node: int, streams: Iterable[str]) -> None:
    """Moves the leadership of `streams` to `node` (a stream leader step-down that names the one to prefer),
    then waits until the cluster is settled with `node` leading each."""
    name = cluster.names[node]
    streams = list(streams)
    nc = await nats.connect(cluster.servers[node].url, allow_reconnect=False, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        for stream in streams:
            info = await js.stream_info(stream)
            assert info.cluster is not None
            if info.cluster.leader != name:
                body = msgspec.json.encode({"placement": {"preferred": name}})
                reply = await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", body, timeout=WAIT)
                assert msgspec.json.decode(reply.data).get("success") is True, reply.data
        await anyio.to_thread.run_sync(cluster.wait_settled, streams)
        for stream in streams:
            info = await js.stream_info(stream)
            assert info.cluster is not None and info.cluster.leader == name, (stream, info.cluster)
    finally:
        await nc.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd", str(tmp_path / "jetstream")])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_config(
    nats_url: str,
    tmp_path: Path,
    *,
    roots: list[Path] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """A configuration for one test: its own cache folder, the example tree unless told otherwise."""
    settings: dict[str, Any] = {
        "nats.url": nats_url,
        "orchestrator.paths.data_dir": str(tmp_path / "data"),
        "orchestrator.extensions.paths": [str(r) for r in (roots or [EXAMPLES])],
        "orchestrator.extensions.auto_load": False,
        "nushell.path": str(NU),
        **(overrides or {}),
    }
    return load_config(environ={}, overrides=[f"{k}={_toml(v)}" for k, v in settings.items()])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return msgspec.json.encode(str(value)).decode()


@asynccontextmanager
async def running_service(config: Config, *, instance_id: str | None = None) -> AsyncIterator[ExtensionService]:
    manager = build_manager(config, instance_id=instance_id)
    async with manager.runner, ExtensionService(config, manager, version=service_version()) as service:
        yield service


@pytest.fixture
def config(nats_server: NatsServer, tmp_path: Path) -> Config:
    return make_config(nats_server.url, tmp_path)


@pytest.fixture
async def service(config: Config) -> AsyncIterator[ExtensionService]:
    async with running_service(config) as svc:
        yield svc


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    conn = await nats.connect(nats_server.url, name="test-client", max_reconnect_attempts=1, allow_reconnect=False)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def client(nc: Client, service: ExtensionService) -> LoaderClient:
    return LoaderClient(nc, timeout=WAIT)


class EventLog:
    """Every message on the event subjects since the test subscribed."""

    def __init__(self) -> None:
        self.messages: list[Msg] = []
        self._changed = Notifier()

    async def add(self, msg: Msg) -> None:
        self.messages.append(msg)
        self._changed.notify()

    def bodies(self, subject_suffix: str = "") -> list[dict[str, Any]]:
        return [msgspec.json.decode(m.data) for m in self.messages if m.subject.endswith(subject_suffix)]

    async def wait_for(self, count: int, subject_suffix: str = "") -> list[dict[str, Any]]:
        with anyio.fail_after(WAIT):
            await self._changed.wait_until(lambda: len(self.bodies(subject_suffix)) >= count)
        return self.bodies(subject_suffix)

    async def wait_until(self, condition: Callable[[], bool], within: float = WAIT) -> None:
        """Returns once `condition()` holds, looked at again as each message arrives."""
        with anyio.fail_after(within):
            await self._changed.wait_until(condition)


@pytest.fixture
async def events(nc: Client) -> EventLog:
    log = EventLog()
    await nc.subscribe("extensions.loaded", cb=log.add)
    await nc.subscribe("extensions.unloaded", cb=log.add)
    await flush_subscriptions(nc)
    return log


@contextmanager
def service_process(
    nats_url: str,
    tmp_path: Path,
    *,
    roots: list[Path] | None = None,
    env: dict[str, str] | None = None,
    stdout: int = subprocess.DEVNULL,
    overrides: dict[str, Any] | None = None,
    ready_when: str = "serving extensions.*",
    lines: list[str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """`extension-loader serve` as a separate process, yielded once it logs `ready_when` (by default, that it
    serves); its log lines go into `lines` when given; killed at the end."""
    sets = {
        "orchestrator.paths.data_dir": str(tmp_path / "data"),
        "orchestrator.extensions.paths": [str(r) for r in (roots or [EXAMPLES])],
        "orchestrator.extensions.auto_load": False,
        "nushell.path": str(NU),
        **(overrides or {}),
    }
    cmd = [str(Path(sys.executable).with_name("extension-loader")), "serve", "--nats-url", nats_url]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={_toml(value)}"]
    proc = subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE
    )
    ready = threading.Event()
    if lines is None:
        lines = []

    def read() -> None:
        assert proc.stderr is not None and lines is not None
        for raw in proc.stderr:
            lines.append(raw.decode(errors="replace"))
            if ready_when in lines[-1]:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(WAIT), "".join(lines)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(WAIT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def copy_example(dest_root: Path, *parts: str) -> Path:
    """Copies one extension folder of the example tree into a test's own tree."""
    source = EXAMPLES.joinpath(*parts)
    target = dest_root.joinpath(*parts)
    shutil.copytree(source, target)
    return target


def write_extension(
    root: Path,
    kind: str,
    name: str,
    version: str | None,
    *,
    dependencies: list[str] | None = None,
    module: str = "export def check [] { {ok: true} }\n",
    metadata: str | None = None,
) -> Path:
    """Writes a small extension (`version=None`: the one-version layout) and returns its folder."""
    folder = root / f"{kind}s" / name / (version or "")
    folder.mkdir(parents=True, exist_ok=True)
    deps = ", ".join(f'"{d}"' for d in dependencies or [])
    (folder / "metadata.toml").write_text(
        metadata
        if metadata is not None
        else (
            f'name = "{name}"\nversion = "{version or "1.0.0"}"\ndescription = "test extension {name}"\n'
            f'type = "{kind}"\ndependencies = [{deps}]\n'
        )
    )
    (folder / "mod.nu").write_text(module)
    return folder


def nushell_processes(cache_dir: Path) -> list[int]:
    """Nushell processes alive that were started for this cache folder: runs and waiting spares."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(MODULE).encode() in cmdline and f"PROVISIONING_EXTENSION_CACHE={cache_dir}".encode() in environ:
            found.append(int(proc.name))
    return found


def proc_strings(pid: int, name: str) -> list[bytes]:
    """/proc/<pid>/cmdline or environ of a live process: NUL-separated strings. Both read empty for the moment
    the process replaces its program (prlimit becoming `nu`): read again, a bounded number of times."""
    for _ in range(10_000):
        data = Path(f"/proc/{pid}/{name}").read_bytes()
        if data:
            return data.split(b"\0")
        os.sched_yield()
    raise AssertionError(f"/proc/{pid}/{name} stays empty")


def stat_fields(path: Path) -> list[str]:
    """The fields of a /proc/.../stat file from the state on (field 3 of stat(5) first; the command name before
    them, in parentheses, may hold spaces). Raises OSError once the process is gone."""
    stat = path.read_text()
    return stat[stat.rfind(")") + 2 :].split()


def describe(pid: int) -> str:
    """What a test needs to know of an unexpected process: its state, parent and command line."""
    try:
        stat = stat_fields(Path(f"/proc/{pid}/stat"))
        command = b" ".join(proc_strings(pid, "cmdline")).decode(errors="replace")
    except OSError:
        return f"{pid}: gone"
    return f"{pid}: state {stat[0]}, parent {stat[1]} (this test runs as {os.getpid()}), {command}"


def thread_niceness(pid: int) -> list[int]:
    """The niceness of every thread of a process (field 19 of /proc/<pid>/task/<tid>/stat)."""
    return [int(stat_fields(task / "stat")[16]) for task in Path(f"/proc/{pid}/task").iterdir()]


class Gate:
    """Holds each Nushell run that loads one extension at its start, until the test lets it go on.

    A test that needs a load to stay in flight while it does other things waits on this, not on a module that
    is slow to parse. The hold cannot be in the extension: Nushell evaluates only `const` commands while it
    parses, and none of them waits on a file (`open` is not one; `use` refuses a FIFO). So it is in front of
    Nushell: `nushell.path` = `gate.nu`, a shell script. The runner hands a run its request (`module serve-one`)
    on standard input; the script reads that line first and, when it names the extension, reads one line from a
    FIFO before it starts the real `nu` with the same arguments and the request on its standard input. The FIFO
    stays open here for reading and writing, so `release` never blocks and a line written before a run gets
    there waits for it. Any other call (`--version`, say) goes straight to `nu`.
    """

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fifo = folder / "gate"
        os.mkfifo(fifo)
        self._fd: int | None = os.open(fifo, os.O_RDWR)
        self.nu = folder / "nu"
        self.nu.write_text(
            "#!/bin/sh\n"
            f"nu={shlex.quote(str(NU))}\n"
            'case " $* " in *" serve-one "*) ;; *) exec "$nu" "$@" ;; esac\n'
            "IFS= read -r request\n"
            f'case "$request" in *\'"name":"{name}"\'*) read -r _ < {shlex.quote(str(fifo))} ;; esac\n'
            'printf \'%s\\n\' "$request" | "$nu" "$@"\n'
        )
        self.nu.chmod(0o755)

    @property
    def settings(self) -> dict[str, Any]:
        """The configuration that puts the gate in front of Nushell. Without spares: a spare is started before it
        knows which extension it will load, so only a run started for its load has the name in its arguments."""
        return {"nushell.path": str(self.nu)}

    def release(self, runs: int = 1) -> None:
        """Lets that many held runs (or runs still to come) go on."""
        assert self._fd is not None, "the gate is closed"
        os.write(self._fd, b"go\n" * runs)

    def close(self) -> None:
        """Lets every run still held go on (it reads the end of the FIFO)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    """A gate on the runs that load the extension named `slow`."""
    held = Gate(tmp_path / "gate", "slow")
    try:
        yield held
    finally:
        held.close()


# --- the registry ---


class JetStreamServer:
    """A JetStream nats-server on one loopback port and one store folder, across stops and starts."""

    def __init__(self, store: Path, extra: list[str] | None = None) -> None:
        self.store = store
        self.extra = extra or []
        self.port = -1  # a free one the first time, the same one after
        self._server: NatsServer | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> JetStreamServer:
        args = ["-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store), *self.extra]
        self._server = NatsServer(args).start()
        self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.resume()
            self._server.stop()
            self._server = None

    def kill(self) -> None:
        """Ends the server at once (SIGKILL), as a crash would; `stop` still reaps it."""
        self._process().kill()

    def pause(self) -> None:
        """Stops the process (SIGSTOP) and returns once it is stopped: its connections stay open and nothing
        answers on them."""
        process = self._process()
        process.send_signal(signal.SIGSTOP)
        os.waitpid(process.pid, os.WUNTRACED)  # the signal is only queued until then

    def resume(self) -> None:
        process = self._process()
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)

    def _process(self) -> subprocess.Popen[bytes]:
        assert self._server is not None and self._server.process is not None, "the server is not running"
        return self._server.process


@pytest.fixture
def js_server(tmp_path: Path) -> Iterator[JetStreamServer]:
    server = JetStreamServer(tmp_path / "jetstream").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    """A publisher's signing key, written as `extension-loader keygen` writes one."""
    write_seed(tmp_path / "publisher.nk")
    return read_seed(tmp_path / "publisher.nk")


def registry_settings(*keys: str, auto_update: bool = False, **more: Any) -> dict[str, Any]:
    """The `[registry]` keys of a loader that trusts `keys`."""
    return {
        "registry.enabled": True,
        "registry.trusted": [{"key": key} for key in keys],
        "registry.auto_update": auto_update,
        **{f"registry.{k}": v for k, v in more.items()},
    }


async def set_up_streams(nc: Client, config: Config | None = None, *, replicas: int | None = None) -> list[Outcome]:
    """`extension-loader setup [--replicas N]` on the test's server: the events stream and the registry's buckets
    as `config` names them (the defaults without one). A stream it would refuse to change fails the test."""
    outcomes = await set_up(nc, targets(config or load_config(environ={})), replicas=replicas)
    assert [o for o in outcomes if o.status is Status.REFUSED] == [], [o.line for o in outcomes]
    return outcomes


async def publish_folder(
    nc: Client, folder: Path, signer: Signer, config: Config, *, replicas: int | None = None
) -> Release:
    """Publishes one extension folder as `extension-loader publish` does, after `extension-loader setup
    [--replicas N]` (which changes nothing from the second time on); returns its index entry."""
    await set_up_streams(nc, config, replicas=replicas)
    buckets = RegistryBuckets(nc)
    await buckets.open()
    outcome = await publish(buckets, await prepare(folder, signer, config))
    return outcome.release


@dataclass
class DevRun:
    """What `extension-loader dev` printed so far, and, once it stopped, its exit status."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    code: int | None = None


@asynccontextmanager
async def dev_running(argv: list[str], *, env: dict[str, str], cwd: Path) -> AsyncIterator[DevRun]:
    """`extension-loader dev` (argv) started, entered once it says it serves ("Ctrl-C stops"), and stopped with
    Ctrl-C (SIGINT) on the way out: the service stops, then its nats-server; `code` is its exit status then."""
    run = DevRun()
    ready = anyio.Event()
    async with await anyio.open_process(argv, env=env, cwd=cwd) as process, anyio.create_task_group() as tg:
        assert process.stdout is not None and process.stderr is not None

        async def read(stream: Any, into: bytearray) -> None:
            async for chunk in stream:
                into.extend(chunk)
                if b"Ctrl-C stops" in run.stdout:
                    ready.set()

        tg.start_soon(read, process.stdout, run.stdout)
        tg.start_soon(read, process.stderr, run.stderr)
        try:
            with anyio.fail_after(WAIT):
                await ready.wait()
            yield run
        finally:
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(WAIT):
                run.code = await process.wait()
