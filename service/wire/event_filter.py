"""Telling an event a loader published from anything else that arrives on an event subject.

NATS checks no permission on a reply subject, so a user who may ask JetStream something can have the answer
delivered onto `extensions.unloaded`: a direct get's answer (a stored message, with the `Nats-Stream` header),
or a pull consumer's messages (each keeps the subject it was stored under, and asks to be acknowledged on
`$JS.ACK.…`). Such a message may even look like an event (a registry record written to look like one).
A pull consumer's status messages (404, 408: a `Status` header, no body) come the same way, and an answer of
JetStream's API itself (a stream's info, a message get) comes with no header at all: only its body, which does
not read as an event, gives it away. What a loader publishes has none of these marks: it is published on the
event subject itself, no stream hands it out, and it reads as an event. Event handlers drop the rest: this
module by the marks, then the handler's own decoding by the body.
"""

from __future__ import annotations

from collections.abc import Container

from nats.aio.msg import Msg

from ..contract.headers import STATUS, STREAM, header

ACK_PREFIX = "$JS.ACK."


def genuine_event(msg: Msg, subjects: Container[str]) -> bool:
    """Whether `msg`, received by a subscription to `subjects`, is an event as a loader publishes it."""
    return (
        msg.subject in subjects
        and not (msg.reply and msg.reply.startswith(ACK_PREFIX))
        and header(msg.headers, STREAM) is None
        and header(msg.headers, STATUS) is None
    )
