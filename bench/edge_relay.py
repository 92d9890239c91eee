"""A TCP relay on the leaf link between an edge site and one hub node: what the edge benchmarks cut and mend.

Each connection the relay accepts is joined to a new one to its target, byte for byte, in threads of its own.
`cut` closes every joined connection, and then each new one as soon as it is accepted (the site's link fails, and
it retries on its own schedule), while the hub runs on; `mend` passes connections again. A target that is not
there (a hub node that was killed) is the same to the site as a cut: the connection is closed at once.
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
    """A relay from a free loopback port (`port`) to `target` on loopback; it passes nothing until `mend`.

    The port stays bound from the first `mend` on, and a cut relay closes each connection as soon as it accepts it:
    a port let go during a cut could be taken meanwhile (every port here is in the range the system picks the local
    ports of outgoing connections from), and the relay could not listen on it again.
    """

    def __init__(self, target: int) -> None:
        self.port = fresh_port()
        self.target = target
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._open = False

    @property
    def listening(self) -> bool:
        with self._lock:
            return self._open

    def mend(self) -> None:
        """Passes connections again (on the same port)."""
        with self._lock:
            self._open = True
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen()
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="relay-accept").start()

    def cut(self) -> None:
        """Closes every connection made through it; until `mend`, each new one is closed as it is accepted."""
        with self._lock:
            self._open = False
            joined, self._sockets = self._sockets, []
        _close(joined)

    def close(self) -> None:
        """Cut, and the port let go for good."""
        self.cut()
        with self._lock:
            listener, self._listener = self._listener, None
        _close([listener] if listener is not None else [])

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return  # closed
            if not self.listening:
                _close([near])
                continue
            try:
                far = socket.create_connection(("127.0.0.1", self.target), timeout=CONNECT_TIMEOUT_S)
            except OSError:
                near.close()  # the target is down: as good as a cut for this connection
                continue
            far.settimeout(None)
            with self._lock:
                if not self._open:
                    _close([near, far])
                    continue
                self._sockets = [s for s in self._sockets if s.fileno() != -1] + [near, far]
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
        source.close()  # each direction closes the socket it reads: both are closed once both have ended


def _close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
