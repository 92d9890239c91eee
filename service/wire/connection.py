"""The NATS connection's life cycle: connect, notice refusals, reconnect, close.

Owns the nats-py client and its callbacks. Connecting tries again while no server answers, but refused
credentials, a certificate that does not verify, a refused inbox (`nats.inbox_prefix`: replies, JetStream's
included, arrive there) or (while starting) refused subscriptions end the start at once with `ConnectRefused`
and one line that says what is needed: nats-py would otherwise retry them for ever, or time out on every
JetStream call. It knows nothing of requests, handlers or the cache.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

import anyio
import nats.errors
from nats.aio.client import Client

from ..contract.config import NatsConfig

log = logging.getLogger(__name__)


class ConnectRefused(Exception):
    """NATS refused the service's credentials, its certificate or its subscriptions; trying again would not
    help."""


async def flush_subscriptions(nc: Client) -> None:
    """Returns once the server has every subscription made so far.

    nats-py 2.16 writes a flush's PING straight to the socket, ahead of SUB commands still queued for its
    flusher task, so one PONG does not prove the SUBs arrived. The first round trip lets the flusher write
    them; the second PING travels behind them.
    """
    await nc.flush()
    await nc.flush()


class NatsConnection:
    def __init__(self, config: NatsConfig, *, on_change: Callable[[], None] = lambda: None) -> None:
        """`on_change`: called after each disconnect and each reconnect."""
        self.config = config
        self._client: Client | None = None
        self._on_change = on_change
        self.closing = False  # a disconnect from here on is ours, not a lost connection
        self.reconnects = 0
        self.disconnects = 0
        self._sub_refusals: list[str] | None = []  # subscriptions refused while starting; None once started

    @property
    def client(self) -> Client:
        assert self._client is not None, "not connected"
        return self._client

    async def connect(self) -> Client:
        """Connects, trying again while no server answers; raises ConnectRefused for refused credentials or a
        certificate that does not verify."""
        nc = Client()
        refused: list[Exception] = []
        settled = anyio.Event()

        async def on_error(exc: Exception) -> None:
            if not nc.is_connected and _is_refusal(exc):
                refused.append(exc)
                settled.set()
            await self._on_error(exc)

        async def attempt() -> None:
            await nc.connect(**self._options(), error_cb=on_error)
            settled.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(attempt)
                await settled.wait()
                tg.cancel_scope.cancel()
        except BaseException:  # cancelled while waiting for a server: leave nothing of the attempt running
            self.closing = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await nc.close()
            raise
        if refused:
            with anyio.CancelScope(shield=True):
                try:
                    await nc.close()
                except Exception as exc:
                    log.debug("closing a refused connection: %s", exc)
            raise ConnectRefused(f"NATS at {self.config.url} refused the connection: {refused[0]}")
        await self._check_inbox(nc)
        self._client = nc
        return nc

    async def _check_inbox(self, nc: Client) -> None:
        """Subscribes to an inbox and leaves it: a server that refuses this user its inbox prefix ends the start
        here, naming nats.inbox_prefix, rather than every JetStream call and fleet request timing out later."""
        sub = await nc.subscribe(nc.new_inbox())
        await flush_subscriptions(nc)  # a refusal arrives before the PONG
        await sub.unsubscribe()
        prefix = f'"{self.config.inbox}.'.lower()  # nats-py lower-cases the server's error text
        refusal = next((r for r in self._sub_refusals or [] if prefix in r.lower()), None)
        if refusal is None:
            return
        self.closing = True
        with anyio.CancelScope(shield=True):
            try:
                await nc.close()
            except Exception as exc:
                log.debug("closing a refused connection: %s", exc)
        raise ConnectRefused(
            f"NATS at {self.config.url} refuses {self._who()} replies under the inbox prefix "
            f"{self.config.inbox!r} ({refusal}): set nats.inbox_prefix to the prefix this user may subscribe to "
            "(nats.conf gives each user _INBOX.<user>; README.md, Security)"
        )

    def check_subscriptions(self) -> None:
        """After the subscriptions are flushed: ConnectRefused if the server refused any of them. From here on,
        a refusal is only logged."""
        refusals, self._sub_refusals = self._sub_refusals or [], None
        if not refusals:
            return
        cfg = self.config
        raise ConnectRefused(
            f"NATS at {cfg.url} lets {self._who()} in but refuses {len(refusals)} of the "
            f"service's subscriptions ({refusals[0]}): the service needs the permissions of the "
            "loader user in nats.conf (README.md, Security)"
        )

    def _who(self) -> str:
        cfg = self.config
        if cfg.user:
            return f"user {cfg.user!r}"
        return "the configured token or credentials" if cfg.token or cfg.creds else "a client without a user name"

    async def close(self) -> None:
        """Flushes what is buffered (replies, events) and closes; shielded, so a cancelled stop still closes."""
        self.closing = True
        nc = self._client
        if nc is None or nc.is_closed:
            return
        with anyio.CancelScope(shield=True):
            try:
                if nc.is_connected:
                    await nc.flush(timeout=2)
            except Exception as exc:
                log.warning("could not flush to NATS on stop: %s", exc)
            try:
                await nc.close()
            except Exception as exc:
                log.warning("closing the NATS connection: %s", exc)

    def _options(self) -> dict[str, Any]:
        cfg = self.config
        return {
            **cfg.credentials(),
            "name": cfg.name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "connect_timeout": 5,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS error: %s", exc)
        if self._sub_refusals is not None and "permissions violation for subscription" in str(exc).lower():
            self._sub_refusals.append(str(exc).removeprefix("nats: "))

    async def _on_disconnected(self) -> None:
        if self.closing:
            log.info("disconnected from NATS")
        else:
            log.warning("disconnected from NATS; reconnecting (events are buffered meanwhile)")
        self.disconnects += 1
        self._on_change()

    async def _on_reconnected(self) -> None:
        url = self.client.connected_url
        log.info("reconnected to NATS at %s", url.netloc if url else "?")
        self.reconnects += 1
        self._on_change()


def _is_refusal(exc: Exception) -> bool:
    return (
        isinstance(exc, nats.errors.AuthorizationError | ssl.SSLError) or "authorization violation" in str(exc).lower()
    )
