"""Hostile extensions against the real sandbox: each is stopped with a clear error and the service serves on.

Extensions are untrusted. Loading one parses its module (`nu-check`), and Nushell evaluates `const`
expressions while it parses, so a module can compute for ever, eat memory or crash the parser. The runner's
limits (prlimit, a wall-clock limit on the whole process group, an output cap) turn each into an error reply.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient, RemoteError
from service.app.natsserver import NatsServer
from service.contract.config import Config
from service.contract.messages import ExtensionType
from service.core.folders import tree_digest
from service.runtime.runner import Limits, NushellRunner, SandboxMissing
from service.runtime.sandbox import Sandbox, base_env
from service.wire.service import ExtensionService
from tests.conftest import (
    EXAMPLES,
    NU,
    WAIT,
    describe,
    make_config,
    nushell_processes,
    running_service,
    service_process,
    write_extension,
)

pytestmark = pytest.mark.anyio


async def leftover_runs(service: ExtensionService) -> list[int]:
    """Nushell processes of this service that are neither waiting spares nor runs in progress: none should be."""
    spares = service.manager.runner.spares
    with anyio.fail_after(WAIT):
        waiting = await spares.wait_full()  # a spare taken a moment ago has its replacement started
    assert service.manager.runner.running == 0
    left = [pid for pid in nushell_processes(service.config.cache_dir) if pid not in waiting]
    for pid in left:  # what a test that fails here needs to know
        print(describe(pid), "waiting:", waiting, "idle now:", spares.idle_pids())
    return left


def listing(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


async def load_error(client: LoaderClient, name: str) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        await client.load("taskserv", name)
    return info.value


@pytest.fixture
def hostile_root(tmp_path: Path) -> Path:
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "good", "1.0.0")
    # Parse-time evaluation that materialises 30 million numbers: gigabytes without a limit.
    write_extension(
        root, "taskserv", "hog", "1.0.0", module="const n = (1..30000000 | math sum)\nexport def x [] { $n }\n"
    )
    # Parse-time evaluation that takes seconds.
    write_extension(
        root, "taskserv", "spin", "1.0.0", module="const n = (1..6000000 | math sum)\nexport def x [] { $n }\n"
    )
    # 10,000 nested parentheses overflow the parser's stack (more only take longer to get there: 100,000 took 4-5 s
    # of the 5 s limit on a busy machine).
    write_extension(root, "taskserv", "crash", "1.0.0", module="export def x [] { " + "(" * 10_000 + "\n")
    # Hundreds of symlinks with long names: the loader's list of problems is far over the output cap.
    flood = write_extension(root, "taskserv", "flood", "1.0.0")
    for i in range(300):
        (flood / f"{i:04d}-{'x' * 120}").symlink_to("/etc/hostname")
    big = write_extension(root, "taskserv", "bulky", "1.0.0")
    (big / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    leak = write_extension(root, "taskserv", "leak", "1.0.0")
    (leak / "secret").symlink_to("/etc/passwd")
    fifo = write_extension(root, "taskserv", "fifo", "1.0.0")
    os.mkfifo(fifo / "pipe")
    odd = write_extension(root, "taskserv", "odd", "1.0.0")
    for name in ("-rf", "with space", "ünïcödé", ".hidden", "$(touch pwned)", "'quote\"", "we*ird[glob]", "--"):
        (odd / name).write_text(f"file {name!r}\n")
    # Names with control characters: `glob` in Nushell does not even see a newline in a name.
    ctrl = write_extension(root, "taskserv", "ctrl", "1.0.0")
    (ctrl / "new\nline").write_text("hidden from glob\n")
    (ctrl / "sneaky\nlink").symlink_to("/etc/passwd")
    deep = odd / "templates"
    for level in range(60):
        deep = deep / f"level-{level}"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("deep\n")
    return root


def sandboxed_config(url: str, tmp_path: Path, root: Path, **overrides: object) -> Config:
    limits: dict[str, object] = {
        "nushell.max_memory_mb": 256,
        "nushell.timeout_s": 5,
        "nushell.max_output_kb": 2,
        "nushell.max_file_mb": 1,
    }
    return make_config(url, tmp_path, roots=[root], overrides={**limits, **overrides})


@pytest.fixture
async def sandboxed(
    nats_server: NatsServer, nc: Client, hostile_root: Path, tmp_path: Path
) -> AsyncIterator[ExtensionService]:
    """The service with the default number of spare processes: every run below goes through a spare."""
    async with running_service(sandboxed_config(nats_server.url, tmp_path, hostile_root)) as service:
        yield service


async def test_memory_limit(sandboxed: ExtensionService, nc: Client) -> None:
    client = LoaderClient(nc, timeout=WAIT)
    err = await load_error(client, "hog")
    assert err.code == "load_failed"
    assert "SIGABRT" in err.message or "memory" in err.details.get("stderr", "")
    assert (await client.load("taskserv", "good"))["metadata"]["name"] == "good"
    assert await leftover_runs(sandboxed) == []


@pytest.mark.parametrize("spares", [2, 0])
async def test_time_limit_kills_the_process_group(
    nats_server: NatsServer, nc: Client, hostile_root: Path, tmp_path: Path, spares: int
) -> None:
    """With spares, the limit counts from the hand-over, not from the spare's start."""
    config = make_config(
        nats_server.url,
        tmp_path,
        roots=[hostile_root],
        overrides={"nushell.max_memory_mb": 4096, "nushell.timeout_s": 0.5, "nushell.spares": spares},
    )
    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        err = await load_error(client, "spin")
        assert (err.code, err.details) == ("timeout", {"timeout_s": 0.5})
        assert await leftover_runs(service) == []
        assert (await client.load("taskserv", "good"))["metadata"]["name"] == "good"
        assert service.manager.runner.spare_runs == (2 if spares else 0)
    assert nushell_processes(config.cache_dir) == []


async def test_a_crashing_parser(sandboxed: ExtensionService, nc: Client) -> None:
    err = await load_error(LoaderClient(nc, timeout=WAIT), "crash")
    assert err.code == "load_failed" and "SIGSEGV" in err.message


async def test_output_cap(sandboxed: ExtensionService, nc: Client) -> None:
    err = await load_error(LoaderClient(nc, timeout=WAIT), "flood")
    assert err.code == "load_failed" and "standard output passed the limit of 2 KB" in err.message
    assert await leftover_runs(sandboxed) == []


async def test_file_size_limit(sandboxed: ExtensionService, nc: Client) -> None:
    err = await load_error(LoaderClient(nc, timeout=WAIT), "bulky")
    assert err.code == "load_failed"
    assert not (sandboxed.config.cache_dir / "taskserv" / "bulky" / "1.0.0").exists()


async def test_symlinks_and_special_files_are_refused(sandboxed: ExtensionService, nc: Client) -> None:
    client = LoaderClient(nc, timeout=WAIT)
    err = await load_error(client, "leak")
    assert err.code == "invalid_extension" and any("symlink" in p for p in err.details["problems"])
    err = await load_error(client, "fifo")
    assert err.code == "invalid_extension"
    err = await load_error(client, "ctrl")
    assert err.code == "invalid_extension"
    problems = " ".join(err.details["problems"])
    assert "symlink not allowed: sneaky" in problems and "control character: new" in problems
    copied = sandboxed.config.cache_dir / "taskserv"
    assert not (copied / "leak").exists() or not any((copied / "leak").rglob("secret"))


async def test_odd_file_names_are_copied_exactly(sandboxed: ExtensionService, nc: Client, hostile_root: Path) -> None:
    ext = await LoaderClient(nc, timeout=WAIT).load("taskserv", "odd")
    source = hostile_root / "taskservs" / "odd" / "1.0.0"
    copy = Path(ext["path"])
    assert listing(copy) == listing(source)
    assert ext["digest"] == tree_digest(source) == tree_digest(copy)
    # `$(touch pwned)` is a name, never a command: nothing of that name appears anywhere the run could write.
    assert not [p for p in listing(sandboxed.config.cache_dir.parent) if p.name == "pwned"]


@pytest.mark.parametrize("spares", [2, 0])
async def test_the_service_serves_on_after_all_of_them(
    nats_server: NatsServer, nc: Client, hostile_root: Path, tmp_path: Path, spares: int
) -> None:
    """The same errors whether a run goes through a spare process or starts its own."""
    config = sandboxed_config(nats_server.url, tmp_path, hostile_root, **{"nushell.spares": spares})
    async with running_service(config) as service:
        await served_on_after_all_of_them(service, LoaderClient(nc, timeout=WAIT))
        assert service.manager.runner.spare_runs == (9 if spares else 0)
    assert nushell_processes(config.cache_dir) == []


async def served_on_after_all_of_them(service: ExtensionService, client: LoaderClient) -> None:
    outcomes = {}
    for name in ("hog", "crash", "flood", "bulky", "leak", "fifo", "ctrl", "odd", "good"):
        try:
            await client.load("taskserv", name)
            outcomes[name] = "ok"
        except RemoteError as exc:
            outcomes[name] = exc.code
    assert outcomes == {
        "hog": "load_failed",
        "crash": "load_failed",
        "flood": "load_failed",
        "bulky": "load_failed",
        "leak": "invalid_extension",
        "fifo": "invalid_extension",
        "ctrl": "invalid_extension",
        "odd": "ok",
        "good": "ok",
    }
    stats = await client.stats()
    assert stats["loads"]["failed"] == 7 and stats["in_flight"] == 0
    assert await leftover_runs(service) == []


# --- priority ----------------------------------------------------------------------------------------------------


async def niceness_seen_by_nushell(limits: Limits, tmp_path: Path) -> int:
    """The niceness a sandboxed `nu` finds itself running at (field 19 of /proc/self/stat)."""
    sandbox = Sandbox(limits)
    script = "open /proc/self/stat | split row ') ' | last | split row ' ' | get 16 | print"
    process = await sandbox.start([str(NU), "-n", "--no-std-lib", "-c", script], cwd=tmp_path, env=base_env(tmp_path))
    with anyio.fail_after(WAIT):
        done = await process.finish()
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


async def test_nushell_runs_at_a_lower_priority_than_the_service(tmp_path: Path) -> None:
    """Cold loads are CPU-bound: at a lower priority they cannot hold up the service's cached answers."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert await niceness_seen_by_nushell(Limits(nice=7), tmp_path) == min(19, own + 7)
    assert await niceness_seen_by_nushell(Limits(nice=0), tmp_path) == own
    assert Limits().nice == 10


# --- without prlimit ----------------------------------------------------------------------------------------------


def path_without_prlimit(tmp_path: Path) -> str:
    """A PATH on which `prlimit` cannot be found (the tests give the service `nu` by its full path)."""
    folder = tmp_path / "bin-without-prlimit"
    folder.mkdir(exist_ok=True)
    return str(folder)


async def test_without_prlimit_the_service_refuses_to_start(nats_server: NatsServer, tmp_path: Path) -> None:
    """No prlimit would mean no memory, CPU or file-size limit on untrusted code: a refusal, not a warning."""
    cli = str(Path(sys.executable).with_name("extension-loader"))
    argv = [cli, "serve", "--nats-url", nats_server.url, "--set", f"nushell.path={NU}"]
    argv += [
        "--set",
        f"orchestrator.paths.data_dir={tmp_path / 'data'}",
        "--set",
        "orchestrator.extensions.auto_load=false",
    ]
    with anyio.fail_after(WAIT):
        done = await anyio.run_process(argv, env={**os.environ, "PATH": path_without_prlimit(tmp_path)}, check=False)
    err = done.stderr.decode()
    assert done.returncode == 3, err
    said = [line for line in err.splitlines() if line.startswith("extension-loader: ")]
    assert len(said) == 1 and "Traceback" not in err, err
    assert "prlimit" in said[0] and "nushell.allow_unlimited = true" in said[0]


async def test_without_prlimit_nushell_runs_unlimited_when_the_configuration_allows_it(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    lines: list[str] = []
    env = {"PATH": path_without_prlimit(tmp_path)}
    with service_process(nats_server.url, tmp_path, env=env, overrides={"nushell.allow_unlimited": True}, lines=lines):
        ext = await LoaderClient(nc, timeout=WAIT).load("taskserv", "kubernetes", version="1.28.0")
    assert ext["metadata"]["name"] == "kubernetes"
    assert any("prlimit" in line and "without" in line for line in lines), lines


async def test_the_runner_looks_for_prlimit_where_it_is_told(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(SandboxMissing, match=r"nushell\.allow_unlimited = true"):
        NushellRunner(
            NU, roots=[EXAMPLES], cache_dir=cache, limits=Limits(), search_path=path_without_prlimit(tmp_path)
        )
    unlimited = NushellRunner(
        NU, roots=[EXAMPLES], cache_dir=cache, limits=Limits(), allow_unlimited=True, search_path=str(tmp_path)
    )
    unlimited.prepare()
    loaded = await unlimited.load(ExtensionType.TASKSERV, "containerd", "1.7.13")
    assert loaded.metadata.name == "containerd"
