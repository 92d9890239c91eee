"""What `extension-loader certs` makes and for whom: the file names, the host names by default, how long
certificates last, and the check of a host name. Apart from `certs.py`, so that the command line, which every
subcommand loads, does not load the `cryptography` library (about 8 MB of every process's memory) to describe them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"

# What clients dial: the host's own loopback (compose publishes the port there; the cluster's nodes listen there)
# and the compose service `nats`, by which the other containers reach it.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1", "nats")
DEFAULT_DAYS = 365
RENEW_WITHIN = dt.timedelta(days=30)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")


def check_host(text: str) -> str:
    """A host name (wildcards only as the first label) or an IP address; ValueError otherwise."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if len(text) > 253 or not _DNS_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is neither a host name nor an IP address")
    return text.lower()
