"""A nats-server with the registry in an account of its own, read from another through its exported API.

Two accounts, as the account layout has them: REG (JetStream: the buckets; users `publisher` and `admin`) and
LIVE (no JetStream; users `loader` and `orchestrator`). REG exports, as services to LIVE only, the read-only
JetStream API of each bucket's stream, and LIVE imports each under `$JS.reg.API` in place of `$JS.API`. Nothing is
exported as a stream (no inbox, no `$JS.FC`, no `$JS.ACK`): no consumer made from LIVE can deliver anything
there, so a reader in LIVE has direct gets and pull consumers (whose messages come back as answers to its own
requests) and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.app.natsserver import NatsServer

INDEX = "KV_extension-index"
ARCHIVES = "OBJ_extension-archives"
READER_PREFIX = "$JS.reg.API"  # where LIVE reaches REG's API
PASSWORDS = {"publisher": "publisher1", "admin": "admin1", "loader": "loader1", "orchestrator": "orchestrator1"}

CONF = """
jetstream {{ store_dir: "{store}" }}
accounts {{
  REG {{
    jetstream: enabled
    users = [
      {{user: publisher, password: {publisher}}}
      {{user: admin, password: {admin}}}
    ]
    exports = [
{exports}
    ]
  }}
  LIVE {{
    users = [
      {{user: loader, password: {loader}}}
      {{user: orchestrator, password: {orchestrator}}}
    ]
    imports = [
{imports}
    ]
  }}
}}
"""


def read_api(stream: str) -> list[str]:
    """The API subjects (after `$JS.API.`) that read one bucket's stream: bind, direct and message gets, and
    pull consumers made, asked, looked at and deleted."""
    return [
        f"STREAM.INFO.{stream}",
        f"STREAM.MSG.GET.{stream}",
        f"DIRECT.GET.{stream}",
        f"DIRECT.GET.{stream}.>",
        f"CONSUMER.CREATE.{stream}",
        f"CONSUMER.CREATE.{stream}.>",
        f"CONSUMER.INFO.{stream}.*",
        f"CONSUMER.DELETE.{stream}.*",
        f"CONSUMER.MSG.NEXT.{stream}.*",
    ]


def accounts_conf(store: Path) -> str:
    exports: list[str] = []
    imports: list[str] = []
    for stream in (INDEX, ARCHIVES):
        for rest in read_api(stream):
            # A pull request is answered by many messages: without `stream` only the first would come back.
            many = ", response_type: stream" if rest.startswith("CONSUMER.MSG.NEXT.") else ""
            exports.append(f'      {{service: "$JS.API.{rest}", accounts: [LIVE]{many}}}')
            imports.append(
                f'      {{service: {{account: REG, subject: "$JS.API.{rest}"}}, to: "{READER_PREFIX}.{rest}"}}'
            )
    return CONF.format(store=store, exports="\n".join(exports), imports="\n".join(imports), **PASSWORDS)


@contextmanager
def accounts_server(folder: Path) -> Iterator[NatsServer]:
    """The two-account server, its configuration and store in `folder`, on a free loopback port."""
    conf = folder / "accounts.conf"
    conf.write_text(accounts_conf(folder / "jetstream"))
    with NatsServer(["-c", str(conf), "-a", "127.0.0.1", "-p", "-1"]) as server:
        yield server
