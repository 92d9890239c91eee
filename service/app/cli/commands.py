"""The client commands of the request subjects, read from the subjects table (`contract/subjects.py`): one
command per request subject, its arguments those of the subject's request struct, `--all` where the subject has
a fleet twin, and the request's body read back from the parsed arguments.

A request field becomes: `extension_type` the TYPE argument, `name` the NAME argument (optional ones also
`--name NAME`), `version` `--version/-v`, any other field an option of its name (`--with-dependencies`), a
choice of its values where it has a fixed set (`--format`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args, get_origin

import msgspec
import msgspec.inspect
from msgspec import Struct

from ...contract.subjects import REQUESTS, RequestSubject

# How a request subject reads as a command, in the order `--help` lists them: the command's name where it is
# not the subject's suffix, and its help. A subject of the table missing here is a command named after its
# suffix, after these, with the subject's summary as its help.
NAMES = {"cache.clear": "clear"}
HELP = {
    "load": "load an extension",
    "reload": "drop an extension from the cache and load it again",
    "list": "what is loaded now (on the instance that answers)",
    "status": "whether an extension is loaded (on the instance that answers)",
    "discover": "what is available on disk",
    "stats": "cache and load statistics (of the instance that answers)",
    "cache.clear": "empty the cache of the instance that answers (extensions.cache.clear)",
    "graph": "an extension's dependency graph",
}
SHORT = {"with_dependencies": "-d", "format": "-f"}  # a field's one-letter option, where it has one
DEST = {"extension_type": "type", "version": "ext_version"}  # `version` would clash with `--version`


def subjects() -> list[RequestSubject]:
    """The request subjects in the order of their commands."""
    order = list(HELP)
    return sorted(REQUESTS, key=lambda s: order.index(s.suffix) if s.suffix in order else len(order))


def command_name(subject: RequestSubject) -> str:
    return NAMES.get(subject.suffix, subject.suffix)


def command_help(subject: RequestSubject) -> str:
    return HELP.get(subject.suffix) or subject.summary


def add_request_arguments(parser: argparse.ArgumentParser, subject: RequestSubject) -> None:
    """The arguments of the subject's request fields, then `--all` and `--replies` where it has a fleet twin."""
    for field in msgspec.structs.fields(subject.request):
        if field.name == "extension_type":
            parser.add_argument("type", nargs=None if field.required else "?", help="provider, taskserv or cluster")
        elif field.name == "name" and field.required:
            parser.add_argument("name")
        elif field.name == "name":
            # SUPPRESS: a NAME left out must not overwrite a --name given before it.
            parser.add_argument(
                "name",
                nargs="?",
                default=argparse.SUPPRESS,
                action=_OneName,
                metavar="NAME",
                help="only this extension",
            )
            parser.add_argument("--name", action=_OneName, help="same as NAME")
        elif field.name == "version":
            parser.add_argument(
                "--version",
                "-v",
                dest="ext_version",
                metavar="VERSION",
                required=field.required,
                help="version or constraint",
            )
        else:
            _option(parser, field)
    if subject.fleet:
        # The reply of one instance describes that instance only; --all asks every instance.
        parser.add_argument(
            "--all", action="store_true", dest="fleet", help="ask every instance and print each one's answer"
        )
        parser.add_argument(
            "--replies",
            type=_count,
            default=0,
            metavar="N",
            help="with --all: stop once N instances have answered (default 0: wait out --timeout)",
        )
    parser.set_defaults(subject=subject.suffix)


def _option(parser: argparse.ArgumentParser, field: msgspec.structs.FieldInfo) -> None:
    flags = [f"--{field.name.replace('_', '-')}", *([SHORT[field.name]] if field.name in SHORT else [])]
    kind = msgspec.inspect.type_info(field.type)
    if isinstance(kind, msgspec.inspect.BoolType):
        parser.add_argument(*flags, action="store_true")
    elif isinstance(kind, msgspec.inspect.LiteralType):
        # In the order the struct declares them (msgspec sorts its own list).
        values = get_args(field.type) if get_origin(field.type) is Literal else tuple(kind.values)
        parser.add_argument(*flags, choices=list(values), default=field.default)
    else:
        convert: Callable[[str], Any] = str
        if isinstance(kind, msgspec.inspect.IntType):
            convert = int
        elif isinstance(kind, msgspec.inspect.FloatType):
            convert = float
        parser.add_argument(*flags, type=convert, dest=field.name, required=field.required)


def request_body(args: argparse.Namespace, request: type[Struct]) -> dict[str, Any]:
    """The request's fields as the command gave them; a field left out (or a flag not given) is not sent."""
    body: dict[str, Any] = {}
    for field in msgspec.structs.fields(request):
        value = getattr(args, DEST.get(field.name, field.name), None)
        if value is not None and value is not False:
            body[field.name] = value
    return body


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return value


class _OneName(argparse.Action):
    """`discover TYPE NAME` and `discover TYPE --name NAME` mean the same; two different names are an error."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        given = getattr(namespace, self.dest, None)
        if given is not None and values is not None and given != values:
            raise argparse.ArgumentError(self, f"{values!r} differs from the name given before, {given!r}")
        setattr(namespace, self.dest, values)
