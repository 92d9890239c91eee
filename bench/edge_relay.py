"""A TCP relay on the leaf link between an edge site and one hub node: what the edge benchmarks cut and mend.

Each connection the relay accepts is joined to a new one to its target, byte for byte, in threads of its own.
`cut` closes the listener and every joined connection (the site then finds nobody listening, and retries on its
own schedule), while the hub runs on; `mend` listens again on the same port. A target that is not there (a hub
node that was killed) is the same to the site as a cut: the connection is closed at once.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from service.app.natsserver import free_port

CONNECT_TIMEOUT_S = 5.0
_HANDED_OUT: set[int] = set()


def fresh_port() -> int:
    """A free loopback port this process has not handed out before: a deployment takes a dozen, each bound only
    once its server starts, so two of them must never be given the same one."""
    while (port := free_port()) in _HANDED_OUT:
        pass
    _HANDED_OUT.add(port)
    return port


class Relay:
    """A relay from a free loopback port (`port`) to `target` on loopback; not listening until `mend`."""

    def __init__(self, target: int) -> None:
        self.port = fresh_port()
        self.target = target
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    @property
    def listening(self) -> bool:
        with self._lock:
            return self._listener is not None

    def mend(self) -> None:
        """Listens again (on the same port); a relay that listens is left as it is."""
        if self.listening:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="relay-accept").start()

    def cut(self) -> None:
        """Closes the listener and every connection made through it."""
        with self._lock:
            listener, self._listener = self._listener, None
            joined, self._sockets = self._sockets, []
        for sock in [*([listener] if listener is not None else []), *joined]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                far = socket.create_connection(("127.0.0.1", self.target), timeout=CONNECT_TIMEOUT_S)
            except OSError:
                near.close()  # the target is down: as good as a cut for this connection
                continue
            far.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    near.close()
                    far.close()
                    return
                self._sockets += [near, far]
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True, name="relay-pump").start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
