"""The service's errors: one root, one class per contract error code.

    LoaderError                 (any error a requester can be told about)
    +-- InvalidRequest          400  the request itself is wrong
    +-- NotFound                404  no extension of that type and name
    +-- VersionNotFound         404  the name exists, no version matches
    +-- DependencyError         424  a dependency is missing, unsatisfiable or cyclic
    +-- InvalidExtension        422  the extension on disk is broken
    +-- LoadFailed              500  Nushell failed in any other way
    +-- LoadTimeout             504  the load ran past its time limit
    +-- Unavailable             503  overloaded, Nushell cannot be started, or the registry cannot be reached
    +-- UntrustedExtension      403  a registry version whose signer, signature or bytes do not check out

Each error carries typed fields and builds its own message; `details()` gives the contract's `details` object.
The NATS wiring is the one place where any exception becomes an error reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from .envelopes import MissingDependency


class LoaderError(Exception):
    """Root of every error that is reported to a requester."""

    code: ClassVar[str] = "load_failed"
    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, Any]:
        return {}


class InvalidRequest(LoaderError):
    code = "invalid_request"
    status = 400

    def __init__(self, reason: str, *, field: str | None = None, about_field: bool = True) -> None:
        """`about_field=False`: the field is named in details only, for a field that should not be there at all
        ("invalid extra: unknown field 'extra'" misreads)."""
        self.field = field
        self.reason = reason
        super().__init__(f"invalid {field}: {reason}" if field and about_field else f"invalid request: {reason}")

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason}
        if self.field is not None:
            out["field"] = self.field
        return out


class NotFound(LoaderError):
    code = "not_found"
    status = 404

    def __init__(self, extension_type: str, name: str, suggestions: Sequence[str] = ()) -> None:
        self.extension_type = extension_type
        self.name = name
        self.suggestions = list(suggestions)
        hint = f"; did you mean {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"no {extension_type} named {name!r}{hint}")

    def details(self) -> dict[str, Any]:
        return {"suggestions": self.suggestions}


class VersionNotFound(LoaderError):
    code = "version_not_found"
    status = 404

    def __init__(self, extension_type: str, name: str, requested: str, available: Sequence[str]) -> None:
        self.requested = requested
        self.available = list(available)
        listed = ", ".join(self.available) or "none"
        super().__init__(f"{extension_type} {name}: no version matches {requested!r} (available: {listed})")

    def details(self) -> dict[str, Any]:
        return {"requested": self.requested, "available": self.available}


class DependencyError(LoaderError):
    code = "dependency_error"
    status = 424

    def __init__(
        self,
        subject: str,
        *,
        missing: Sequence[MissingDependency] = (),
        cycle: Sequence[str] = (),
        path: Sequence[str] = (),
    ) -> None:
        self.missing = list(missing)
        self.cycle = list(cycle)
        self.path = list(path)
        parts = [_unmet(m) for m in self.missing]
        if self.cycle:
            parts.append(f"cycle: {' -> '.join(self.cycle)}")
        via = f" (via {' -> '.join(self.path)})" if len(self.path) > 1 else ""
        super().__init__(f"{subject}: dependency error{via}: {'; '.join(parts)}")

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"missing": self.missing, "cycle": self.cycle}
        if self.path:
            out["path"] = self.path
        return out


def _unmet(missing: MissingDependency) -> str:
    if not missing.available:
        return f"{missing.dependency} is not available"
    have = ", ".join(missing.available)
    if missing.constraint is None:  # only pre-releases: "latest" means a stable version
        return f"{missing.dependency} has no stable version (available: {have})"
    return f"{missing.dependency} has no version matching {missing.constraint} (available: {have})"


class InvalidExtension(LoaderError):
    code = "invalid_extension"
    status = 422

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(f"invalid extension at {path}: {'; '.join(self.problems)}")

    def details(self) -> dict[str, Any]:
        return {"path": self.path, "problems": self.problems}


class LoadFailed(LoaderError):
    code = "load_failed"
    status = 500

    def __init__(self, reason: str, *, exit_code: int | None = None, stderr: str = "") -> None:
        self.reason = reason
        self.exit_code = exit_code
        self.stderr = stderr
        super().__init__(f"load failed: {reason}")

    def details(self) -> dict[str, Any]:
        return {"reason": self.reason, "exit_code": self.exit_code, "stderr": self.stderr}


class LoadTimeout(LoaderError):
    code = "timeout"
    status = 504

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"the load ran past its limit of {timeout_s:g} s; the Nushell process was killed")

    def details(self) -> dict[str, Any]:
        return {"timeout_s": self.timeout_s}


class Unavailable(LoaderError):
    code = "unavailable"
    status = 503

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"unavailable: {reason}")

    def details(self) -> dict[str, Any]:
        return {"reason": self.reason}


class UntrustedExtension(LoaderError):
    """A registry version that is not loaded: its signer is not trusted (for this extension), its signature
    does not verify, or its bytes do not match the digest that was signed. Nothing of it was unpacked."""

    code = "untrusted_extension"
    status = 403

    def __init__(self, extension_type: str, name: str, version: str, reason: str, *, signer: str | None = None) -> None:
        self.extension_type = extension_type
        self.name = name
        self.version = version
        self.reason = reason
        self.signer = signer
        super().__init__(f"{extension_type} {name} {version} from the registry is not trusted: {reason}")

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "extension_type": self.extension_type,
            "name": self.name,
            "version": self.version,
            "reason": self.reason,
        }
        if self.signer is not None:
            out["signer"] = self.signer
        return out


class ConfigError(Exception):
    """A bad configuration file or value; raised at start, names the key."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"configuration error at {key}: {reason}")


ERROR_CODES: dict[str, int] = {
    cls.code: cls.status
    for cls in (
        InvalidRequest,
        NotFound,
        VersionNotFound,
        DependencyError,
        InvalidExtension,
        LoadFailed,
        LoadTimeout,
        Unavailable,
        UntrustedExtension,
    )
}
