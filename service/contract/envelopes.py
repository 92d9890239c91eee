"""The envelope every reply comes in: `{"success": true, "data": ...}` or `{"success": false, "error": ...}`
with the error's body (and the details a `dependency_error` carries), and the fleet's per-instance answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from msgspec import Meta, Struct

__all__ = ["DependencyErrorDetails", "ErrorBody", "Failure", "InstanceReply", "MissingDependency", "Success"]


class MissingDependency(Struct, frozen=True, kw_only=True):
    """A declared dependency that no extension on disk meets."""

    dependency: Annotated[
        str,
        Meta(description="type:name; an entry declared without a type is given one as the contract says"),
    ]
    constraint: Annotated[
        str | None,
        Meta(
            description="the version constraint no available version meets, as declared; several constraints "
            "on the same dependency (from several dependents) are joined with ',' (all must hold); null: none",
            examples=["^2", "^1,^2"],
        ),
    ]
    available: Annotated[
        tuple[str, ...], Meta(description="the versions there are, newest first; empty: no such extension")
    ]


class DependencyErrorDetails(Struct, frozen=True, kw_only=True):
    """The `details` of a `dependency_error`."""

    missing: Annotated[
        tuple[MissingDependency, ...], Meta(description="dependencies not there, or with no version that fits")
    ]
    cycle: Annotated[tuple[str, ...], Meta(description="type:name entries that lead back to the first")]
    path: Annotated[
        tuple[str, ...], Meta(description="type:name from the requested extension to the one that failed")
    ] = ()


class ErrorBody(Struct, frozen=True, kw_only=True):
    code: Literal[
        "invalid_request",
        "not_found",
        "version_not_found",
        "dependency_error",
        "invalid_extension",
        "load_failed",
        "timeout",
        "unavailable",
        "untrusted_extension",
    ]
    message: str
    details: dict[str, Any] = {}


T = TypeVar("T")


class Success(Struct, Generic[T], frozen=True, kw_only=True):
    success: Literal[True] = True
    data: T


class Failure(Struct, frozen=True, kw_only=True):
    success: Literal[False] = False
    error: ErrorBody


class InstanceReply(Struct, Generic[T], frozen=True, kw_only=True):
    """One instance's answer on a fleet subject (`<prefix>.all.*`): its id and its own single-subject answer."""

    instance_id: str
    data: T
