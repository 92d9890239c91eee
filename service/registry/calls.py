"""Calls to JetStream on one NATS connection, each bounded in time, with nats-py's errors turned into ours.

Every call looks at the connection first and gives up after `timeout_s`, so a loader whose server is gone fails
at once instead of waiting out nats-py's own time-outs (a KV get on a dead connection waits 5 s). The reads that
bind the buckets, and the making of a consumer, are sent again each second they go unanswered within that bound
(`asked`): while a cluster elects new leaders (a node stopped), its servers drop requests rather than answer
them. What nats-py raises becomes one of `errors.py`'s, saying what to do.

Every JetStream request goes through `api_prefix`: `$JS.API` on the registry's own account, or the prefix under
which another account imports the registry's read API (`$JS.reg.API`); subjects written by hand take it from
`api`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from .errors import RegistryError, RegistryUnavailable
from .names import BucketNames

DEFAULT_API_PREFIX: Final = "$JS.API"
POLL_S: Final = 0.25  # how often a wait looks at the connection: nats-py tells only its own callbacks
_ATTEMPT_S: Final = 1.0  # a read that JetStream has not answered in this long is sent again (see `asked`)
_STREAM_NOT_FOUND: Final = 10059
_T = TypeVar("_T")


class Calls:
    """The registry's calls on one connection, which the caller owns (and reconnects)."""

    def __init__(self, nc: Client, names: BucketNames, timeout_s: float, api_prefix: str = DEFAULT_API_PREFIX) -> None:
        self.nc = nc
        self.names = names
        self.timeout_s = timeout_s
        self.api_prefix = api_prefix
        self.js = nc.jetstream(prefix=api_prefix, timeout=timeout_s)
        self._attempt_s = min(_ATTEMPT_S, timeout_s)
        self._attempt = nc.jetstream(prefix=api_prefix, timeout=self._attempt_s)  # for `asked`

    def api(self, request: str) -> str:
        """The subject of a JetStream API request (`CONSUMER.DELETE.<stream>.<name>`) under `api_prefix`."""
        return f"{self.api_prefix}.{request}"

    @contextlib.asynccontextmanager
    async def bounded(self, doing: str, limit: float | None = None) -> AsyncIterator[None]:
        """Checks the connection, bounds the block by `limit` (default `timeout_s`) and turns nats-py's errors
        into ours."""
        seconds = self.timeout_s if limit is None else limit
        if not self.nc.is_connected:
            raise RegistryUnavailable(f"cannot {doing}: not connected to NATS ({self.state()})")
        errors_before = self.nc.last_error
        try:
            async with asyncio.timeout(seconds):
                yield
        except RegistryError:
            raise
        except TimeoutError as exc:
            raise RegistryUnavailable(self._no_answer(doing, seconds, errors_before)) from exc
        except nats.errors.NoRespondersError as exc:
            raise RegistryUnavailable(f"cannot {doing}: {self._no_jetstream()}") from exc
        except nats.js.errors.ServiceUnavailableError as exc:
            raise RegistryUnavailable(f"cannot {doing}: {self._no_jetstream()}") from exc
        except nats.js.errors.BadBucketError as exc:
            raise RegistryUnavailable(
                f"cannot {doing}: the stream behind bucket {self.names.index!r} is not a Key-Value bucket"
            ) from exc
        except nats.js.errors.APIError as exc:
            if exc.err_code == _STREAM_NOT_FOUND:
                raise RegistryUnavailable(
                    f"cannot {doing}: a registry bucket was deleted ({self.names.index!r} or "
                    f"{self.names.archives!r}); `extension-loader setup` creates them again"
                ) from exc
            raise RegistryUnavailable(f"cannot {doing}: JetStream refused: {exc.description} ({exc.err_code})") from exc
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.errors.OutboundBufferLimitError,
        ) as exc:
            raise RegistryUnavailable(f"cannot {doing}: the connection to NATS was lost ({self.state()})") from exc
        except nats.errors.Error as exc:
            raise RegistryUnavailable(f"cannot {doing}: {exc}") from exc

    async def asked(self, request: Callable[[JetStreamContext], Awaitable[_T]]) -> _T:
        """A request that only reads, sent again each `_ATTEMPT_S` it goes unanswered, within the caller's
        `bounded`: while a cluster elects new leaders (a server stopped), the servers drop requests instead of
        answering them, and a single one would wait out the whole `timeout_s` for nothing."""
        while True:
            try:
                return await request(self._attempt)
            except nats.errors.TimeoutError:
                if not self.nc.is_connected:
                    raise

    async def requested(self, request: str, payload: bytes) -> Msg:
        """The answer to the API request `request` (under `api_prefix`), sent again as `asked` does: for a
        request that may be repeated, such as making a consumer of a given name and configuration."""
        subject = self.api(request)
        return await self.asked(lambda _: self.nc.request(subject, payload, timeout=self._attempt_s))

    async def stream_answers(self, stream: str) -> None:
        """Returns once JetStream answers for `stream`, whether it is there or not (see `asked`)."""

        async def info(js: JetStreamContext) -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):  # the caller's bind says which is missing
                await js.stream_info(stream)

        await self.asked(info)

    def check_same_connection(self, doing: str, reconnects: int) -> None:
        """RegistryUnavailable when the connection is down, or came back since `reconnects` was read."""
        if not self.nc.is_connected or self.reconnects() != reconnects:
            raise RegistryUnavailable(
                f"{doing}: the connection to NATS was lost ({self.state()}); start again once it is back"
            )

    def reconnects(self) -> int:
        return int(self.nc.stats["reconnects"])

    def state(self) -> str:
        nc = self.nc
        if nc.is_closed:
            return "the connection is closed"
        if nc.is_reconnecting:
            return "reconnecting"
        if nc.is_connected:
            return "connected again"
        return "connecting"

    def _no_answer(self, doing: str, seconds: float, errors_before: Exception | None) -> str:
        error = self.nc.last_error
        if error is not None and error is not errors_before and "permissions violation" in str(error).lower():
            return (
                f"cannot {doing}: the server refused permission ({error}); give this user the registry's "
                f"subjects for streams {self.names.index_stream} and {self.names.archive_stream} (README, Security)"
            )
        if not self.nc.is_connected:
            return f"cannot {doing}: the connection to NATS was lost ({self.state()})"
        return f"cannot {doing}: NATS did not answer within {seconds:g} s; is JetStream up and the server reachable?"

    def _no_jetstream(self) -> str:
        if self.api_prefix != DEFAULT_API_PREFIX:
            return (
                f"JetStream did not answer under {self.api_prefix}: this account imports no registry API there "
                "(check registry.api_prefix and the server's imports), or a registry bucket's stream is missing"
            )
        return (
            "JetStream did not answer: the server runs without JetStream (start nats-server with -js or a "
            "jetstream block), or a registry bucket's stream is missing"
        )
