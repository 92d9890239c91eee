"""The project's Nushell loader (`service/runtime/nushell/provisioning.nu`), run with the real `nu` on real folders.

Every test starts `nu` the way the service does: an argument list, a clean environment, the two
`PROVISIONING_EXTENSION_*` variables. Trees come from `examples/extensions` or are built in `tmp_path`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import semantic_version as sv

from service.runtime.runner import MODULE
from tests.conftest import EXAMPLES, KUBERNETES_1_28, NU, ROOT

INVALID = 3  # the loader's exit code for an error it reports as JSON

VALID_MOD = """\
# A small module, as an extension ships it.
export def install [server: string, --dry-run] {
    {server: $server, steps: ["apt-get install -y thing"], dry_run: $dry_run}
}

export def "config generate" [--port: int = 8080] { {port: $port} }
"""


def metadata_toml(
    name: str,
    version: str,
    *,
    ext_type: str = "taskserv",
    dependencies: tuple[str, ...] = (),
    extra: str = "",
) -> str:
    deps = ", ".join(json.dumps(d) for d in dependencies)
    return (
        f'name = "{name}"\nversion = "{version}"\ndescription = "The {name} extension"\n'
        f'type = "{ext_type}"\ndependencies = [{deps}]\n{extra}'
    )


def write_extension(
    root: Path,
    name: str,
    version: str,
    *,
    folder: str = "taskservs",
    versioned: bool = True,
    metadata: str | None = None,
    mod: str = VALID_MOD,
    files: dict[str, str] | None = None,
) -> Path:
    """Writes one extension and returns its folder (the version folder in the versioned layout)."""
    ext = root / folder / name / version if versioned else root / folder / name
    ext.mkdir(parents=True)
    ext_type = folder.removesuffix("s")
    text = metadata if metadata is not None else metadata_toml(name, version, ext_type=ext_type)
    (ext / "metadata.toml").write_text(text)
    (ext / "mod.nu").write_text(mod)
    for rel, content in (files or {}).items():
        (ext / rel).parent.mkdir(parents=True, exist_ok=True)
        (ext / rel).write_text(content)
    return ext


def tree_digest(folder: Path) -> str:
    """The loader's digest, computed independently: see the comment on `digest` in provisioning.nu."""
    files = sorted(
        (path.relative_to(folder).as_posix().encode(), path)
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink()
    )
    text = b"".join(rel + b"\t" + hashlib.sha256(p.read_bytes()).hexdigest().encode() + b"\n" for rel, p in files)
    return "sha256:" + hashlib.sha256(text).hexdigest()


def file_contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@dataclass(frozen=True)
class Loader:
    """Runs the loader with a clean environment: only PATH, HOME, LANG and the two extension variables."""

    roots: tuple[Path, ...]
    cache: Path
    home: Path

    def env(self, *, configured: bool = True) -> dict[str, str]:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8"}
        if configured:
            env["PROVISIONING_EXTENSION_PATHS"] = ":".join(str(r) for r in self.roots)
            env["PROVISIONING_EXTENSION_CACHE"] = str(self.cache)
        return env

    def argv(self, *args: str) -> list[str]:
        assert NU.is_file(), f"Nushell is missing at {NU}: run `npm ci` (or `make install`) first"
        return [str(NU), "-n", str(MODULE), *args]

    def run(self, *args: str, cwd: Path = ROOT, configured: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            env=self.env(configured=configured),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def ok(self, *args: str) -> Any:
        result = self.run(*args)
        assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        return one_json(result.stdout)

    def error(self, code: str, *args: str) -> dict[str, Any]:
        result = self.run(*args)
        assert result.returncode == INVALID, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        body = one_json(result.stdout)
        assert set(body) == {"error"}
        error: dict[str, Any] = body["error"]
        assert set(error) == {"code", "message", "details"}
        assert error["code"] == code, error
        assert isinstance(error["message"], str) and error["message"]
        return error

    def serve_one(self, request: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
        """`module serve-one` as the service runs it: the request on standard input."""
        return subprocess.run(
            self.argv("module", "serve-one", *args),
            input=request,
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            timeout=30,
            check=False,
        )

    def load(self, ext_type: str, name: str, version: str | None = None) -> dict[str, Any]:
        args = ["module", "load", ext_type, name, "--output", "json"]
        loaded: dict[str, Any] = self.ok(*args, *(["--version", version] if version else []))
        assert set(loaded) == {"metadata", "path", "digest", "source"}
        return loaded


def one_json(stdout: str) -> Any:
    """stdout must hold exactly one JSON document on one line, nothing else."""
    assert stdout.endswith("\n") and stdout.count("\n") == 1, repr(stdout)
    return json.loads(stdout)


@pytest.fixture
def examples(tmp_path: Path) -> Loader:
    home = tmp_path / "home"
    home.mkdir()
    return Loader(roots=(EXAMPLES,), cache=tmp_path / "cache", home=home)


@pytest.fixture
def tree(tmp_path: Path) -> Loader:
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "root").mkdir()
    return Loader(roots=(tmp_path / "root",), cache=tmp_path / "cache", home=home)


# --- load ---------------------------------------------------------------------------------------------------


def test_load_versioned_extension(examples: Loader) -> None:
    loaded = examples.load("taskserv", "kubernetes", "1.28.0")

    assert loaded["metadata"] == KUBERNETES_1_28
    source = EXAMPLES.resolve() / "taskservs/kubernetes/1.28.0"
    copy = Path(loaded["path"])
    assert loaded["source"] == str(source)
    assert copy == examples.cache.resolve() / "taskserv/kubernetes/1.28.0"
    assert file_contents(copy) == file_contents(source)
    assert "templates/kubeadm.nu" in file_contents(copy)
    assert loaded["digest"] == tree_digest(copy) == tree_digest(source)


def test_load_one_version_layout(examples: Loader) -> None:
    latest = examples.load("taskserv", "containerd")
    exact = examples.load("taskserv", "containerd", "1.7.13")

    assert latest["metadata"]["version"] == exact["metadata"]["version"] == "1.7.13"
    assert latest["metadata"]["repository"] is None
    assert exact["source"] == str(EXAMPLES.resolve() / "taskservs/containerd")
    copy = Path(exact["path"])
    assert copy == examples.cache.resolve() / "taskserv/containerd/1.7.13"
    assert file_contents(copy) == file_contents(EXAMPLES / "taskservs/containerd")
    assert exact["digest"] == latest["digest"] == tree_digest(copy)


def test_digest_covers_hidden_files_and_bytes(tree: Loader) -> None:
    ext = write_extension(tree.roots[0], "alpha", "1.0.0", files={".hidden": "x", "a/b/Z.bin": "\x00\xff\r\n"})
    loaded = tree.load("taskserv", "alpha", "1.0.0")

    assert {".hidden", "a/b/Z.bin"} <= set(file_contents(Path(loaded["path"])))
    assert loaded["digest"] == tree_digest(ext)


def test_load_without_version_picks_the_highest_stable(examples: Loader) -> None:
    assert examples.load("taskserv", "kubernetes")["metadata"]["version"] == "1.29.2"
    assert examples.load("provider", "aws")["metadata"]["version"] == "2.0.0"


def test_load_without_version_refuses_when_there_are_only_prereleases(tree: Loader) -> None:
    # Latest is the highest stable version, as in the service: a pre-release loads only by its version.
    for version in ("2.0.0-beta.2", "2.0.0-rc.1", "1.9.0-rc.3"):
        write_extension(tree.roots[0], "alpha", version)
    for latest in ([], ["--version", "latest"]):
        error = tree.error("version_not_found", "module", "load", "taskserv", "alpha", *latest)
        assert error["details"] == {
            "extension_type": "taskserv",
            "name": "alpha",
            "requested": "latest",
            "available": ["2.0.0-rc.1", "2.0.0-beta.2", "1.9.0-rc.3"],
        }
    assert tree.load("taskserv", "alpha", "2.0.0-beta.2")["metadata"]["version"] == "2.0.0-beta.2"


def test_load_an_exact_prerelease(examples: Loader) -> None:
    loaded = examples.load("taskserv", "kubernetes", "1.30.0-rc.1")
    assert loaded["metadata"]["version"] == "1.30.0-rc.1"
    assert Path(loaded["path"]).name == "1.30.0-rc.1"


@pytest.mark.parametrize("spelling", ["taskserv", "taskservs", "Taskservs", "TASKSERV"])
def test_type_is_singular_or_plural_in_any_case(examples: Loader, spelling: str) -> None:
    loaded = examples.load(spelling, "etcd")
    assert loaded["metadata"]["extension_type"] == "taskserv"
    assert Path(loaded["path"]).parent.parent.name == "taskserv"
    (found,) = examples.ok("module", "discover", spelling, "--name", "etcd")
    assert found["extension_type"] == "taskserv"


def test_reload_replaces_the_copy_and_leaves_nothing_aside(tree: Loader) -> None:
    ext = write_extension(tree.roots[0], "alpha", "1.0.0", files={"templates/old.txt": "old"})
    first = tree.load("taskserv", "alpha", "1.0.0")

    (ext / "templates/old.txt").unlink()
    (ext / "templates/new.txt").write_text("new")
    second = tree.load("taskserv", "alpha", "1.0.0")

    copy = Path(second["path"])
    assert copy == Path(first["path"])
    assert second["digest"] != first["digest"]
    assert second["digest"] == tree_digest(copy) == tree_digest(ext)
    assert set(file_contents(copy)) == {"metadata.toml", "mod.nu", "templates/new.txt"}
    assert [p.name for p in copy.parent.iterdir()] == ["1.0.0"]


def test_concurrent_loads_of_one_version_all_succeed(tree: Loader) -> None:
    ext = write_extension(tree.roots[0], "alpha", "1.0.0", files={"templates/a.txt": "a"})
    argv = tree.argv("module", "load", "taskserv", "alpha", "--version", "1.0.0")
    processes = [
        subprocess.Popen(argv, env=tree.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=30) for p in processes]

    assert [p.returncode for p in processes] == [0] * 8, outputs
    assert {one_json(out)["digest"] for out, _ in outputs} == {tree_digest(ext)}
    parent = tree.cache / "taskserv/alpha"
    assert [p.name for p in parent.iterdir()] == ["1.0.0"]
    assert file_contents(parent / "1.0.0") == file_contents(ext)


def test_load_removes_stale_leftovers_of_killed_loads(tree: Loader) -> None:
    write_extension(tree.roots[0], "alpha", "1.0.0")
    parent = tree.cache / "taskserv/alpha"
    stale, fresh = parent / ".1.0.0.tmp-STALE1", parent / ".1.0.0.tmp-FRESH1"
    for leftover in (stale, fresh):
        leftover.mkdir(parents=True)
        (leftover / "mod.nu").write_text("half a copy")
    an_hour_ago = stale.stat().st_mtime - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))

    tree.load("taskserv", "alpha", "1.0.0")

    # A recent one may belong to a load still running in another process: it stays.
    assert sorted(p.name for p in parent.iterdir()) == [".1.0.0.tmp-FRESH1", "1.0.0"]


def test_first_root_wins(tmp_path: Path, tree: Loader) -> None:
    second = tmp_path / "second"
    write_extension(tree.roots[0], "alpha", "1.0.0")
    write_extension(second, "alpha", "2.0.0")
    write_extension(second, "beta", "3.0.0")
    loader = Loader(roots=(*tree.roots, second), cache=tree.cache, home=tree.home)

    assert loader.load("taskserv", "alpha")["metadata"]["version"] == "1.0.0"
    loader.error("version_not_found", "module", "load", "taskserv", "alpha", "--version", "2.0.0")
    assert loader.load("taskserv", "beta")["source"] == str(second.resolve() / "taskservs/beta/3.0.0")
    found = loader.ok("module", "discover", "taskserv")
    assert [(a["name"], a["versions"]) for a in found] == [("alpha", ["1.0.0"]), ("beta", ["3.0.0"])]


def test_defaults_are_relative_to_the_working_folder(tmp_path: Path, tree: Loader) -> None:
    write_extension(tmp_path / "examples/extensions", "alpha", "1.0.0", folder="providers")
    result = tree.run("module", "load", "provider", "alpha", cwd=tmp_path, configured=False)

    assert result.returncode == 0, result.stderr
    assert one_json(result.stdout)["path"] == str(tmp_path.resolve() / "data/extensions/provider/alpha/1.0.0")


# --- serve-one: the entry the service's spare processes wait in ---------------------------------------------------


@pytest.mark.parametrize("ahead", [[], ["--ahead"]], ids=["on-demand", "ahead"])
def test_serve_one_does_what_load_does(examples: Loader, ahead: list[str]) -> None:
    """The same result, whether the process warmed up while it waited (`--ahead`, a spare) or not."""
    by_argv = examples.load("taskserv", "kubernetes", "1.28.0")
    request = json.dumps({"type": "taskservs", "name": "kubernetes", "version": "1.28.0"}).encode() + b"\n"
    served = examples.serve_one(request, *ahead)

    assert served.returncode == 0, served.stderr
    assert one_json(served.stdout.decode()) == by_argv
    latest = examples.serve_one(b'{"type": "taskserv", "name": "kubernetes", "version": null}')
    assert one_json(latest.stdout.decode())["metadata"]["version"] == "1.29.2"
    assert one_json(examples.serve_one(b'{"type": "taskserv", "name": "etcd"}').stdout.decode())["digest"]


def test_serve_one_reports_errors_as_load_does(examples: Loader) -> None:
    served = examples.serve_one(b'{"type": "taskserv", "name": "kubernetes", "version": "9.9.9"}')
    by_argv = examples.error("version_not_found", "module", "load", "taskserv", "kubernetes", "--version", "9.9.9")
    assert served.returncode == INVALID
    assert one_json(served.stdout.decode())["error"] == by_argv


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"",
        b"garbage",
        b"[1]",
        b'"text"',
        b'{"type": "taskserv"}',
        b'{"type": "taskserv", "name": 3}',
        b'{"type": "taskserv", "name": "etcd", "version": 3}',
    ],
    ids=["empty", "garbage", "list", "string", "no-name", "name-not-text", "version-not-text"],
)
def test_serve_one_refuses_a_bad_request(examples: Loader, request_bytes: bytes) -> None:
    served = examples.serve_one(request_bytes)
    assert served.returncode == INVALID, served.stderr
    error = one_json(served.stdout.decode())["error"]
    assert (error["code"], error["details"]["field"]) == ("invalid_request", "request")
    assert not examples.cache.exists()


# --- errors -------------------------------------------------------------------------------------------------


def test_not_found_suggests_close_names(examples: Loader) -> None:
    error = examples.error("not_found", "module", "load", "taskserv", "kubernets", "--version", "1.28.0")
    assert error["details"] == {
        "extension_type": "taskserv",
        "name": "kubernets",
        "suggestions": ["kubernetes"],
    }
    error = examples.error("not_found", "module", "load", "cluster", "kubernetes")
    assert error["details"]["suggestions"] == []


def test_version_not_found_lists_versions_newest_first(examples: Loader) -> None:
    error = examples.error("version_not_found", "module", "load", "taskserv", "kubernetes", "--version", "1.27.0")
    assert error["details"] == {
        "extension_type": "taskserv",
        "name": "kubernetes",
        "requested": "1.27.0",
        "available": ["1.30.0-rc.1", "1.29.2", "1.28.0"],
    }
    error = examples.error("version_not_found", "module", "load", "taskserv", "containerd", "--version", "1.6.0")
    assert error["details"] == {
        "extension_type": "taskserv",
        "name": "containerd",
        "requested": "1.6.0",
        "available": ["1.7.13"],
    }


def test_versions_are_ordered_by_semantic_version(tree: Loader) -> None:
    for version in ("0.9.0", "1.0.0-rc.2", "1.10.0", "1.0.0", "1.0.0-rc.10", "1.9.0", "1.0.0-alpha"):
        write_extension(tree.roots[0], "alpha", version)
    error = tree.error("version_not_found", "module", "load", "taskserv", "alpha", "--version", "5.0.0")
    expected = ["1.10.0", "1.9.0", "1.0.0", "1.0.0-rc.10", "1.0.0-rc.2", "1.0.0-alpha", "0.9.0"]
    assert error["details"]["available"] == expected


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["module", "load", "widget", "alpha"], "extension_type"),
        (["module", "load", "taskserv", "../alpha"], "name"),
        (["module", "load", "taskserv", "Alpha"], "name"),
        (["module", "load", "taskserv", "alpha", "--version", "../1.0.0"], "version"),
        (["module", "load", "taskserv", "alpha", "--output", "yaml"], "output"),
        (["module", "discover", "widgets"], "extension_type"),
    ],
)
def test_invalid_arguments(tree: Loader, args: list[str], field: str) -> None:
    assert tree.error("invalid_request", *args)["details"]["field"] == field
    assert not tree.cache.exists()


BROKEN_MOD = "export def install [] {\n    let x =\n"


@pytest.mark.parametrize(
    ("name", "metadata", "mod", "problem"),
    [
        ("badtoml", 'name = "badtoml\nversion = 1.0.0\n', VALID_MOD, "metadata.toml is not valid TOML"),
        (
            "nodesc",
            'name = "nodesc"\nversion = "1.0.0"\ntype = "taskserv"\n',
            VALID_MOD,
            "missing field: description",
        ),
        ("wrongtype", metadata_toml("wrongtype", "1.0.0", ext_type="provider"), VALID_MOD, "type 'provider'"),
        ("wrongname", metadata_toml("othername", "1.0.0"), VALID_MOD, "does not match the folder name"),
        (
            "wrongversion",
            metadata_toml("wrongversion", "1.0.1"),
            VALID_MOD,
            "does not match the version folder",
        ),
        (
            "unknownkey",
            metadata_toml("unknownkey", "1.0.0", extra='license = "MIT"\n'),
            VALID_MOD,
            "unknown key",
        ),
        (
            "baddep",
            metadata_toml("baddep", "1.0.0", dependencies=("Bad Dep",)),
            VALID_MOD,
            "dependency 'Bad Dep'",
        ),
        (
            "deptype",
            metadata_toml("deptype", "1.0.0", dependencies=("taskserv:etcd", "widget:etcd")),
            VALID_MOD,
            "dependency 'widget:etcd' names an unknown type",
        ),
        (
            "nonstring",
            'name = "nonstring"\nversion = "1.0.0"\ndescription = 3\ntype = "taskserv"\n',
            VALID_MOD,
            "field description must be a string",
        ),
        ("badmod", metadata_toml("badmod", "1.0.0"), BROKEN_MOD, "mod.nu does not parse as a Nushell module"),
    ],
)
def test_invalid_extension(tree: Loader, name: str, metadata: str, mod: str, problem: str) -> None:
    ext = write_extension(tree.roots[0], name, "1.0.0", metadata=metadata, mod=mod)
    error = tree.error("invalid_extension", "module", "load", "taskserv", name, "--version", "1.0.0")

    assert error["details"]["path"] == str(ext.resolve())
    assert any(problem in p for p in error["details"]["problems"]), error["details"]["problems"]
    assert not (tree.cache / "taskserv" / name).exists()


def test_invalid_extension_reports_every_problem(tree: Loader) -> None:
    metadata = 'name = "alpha"\nversion = "2.0.0"\ntype = "cluster"\nextra = 1\n'
    write_extension(tree.roots[0], "alpha", "1.0.0", metadata=metadata, mod=BROKEN_MOD)
    problems = tree.error("invalid_extension", "module", "load", "taskserv", "alpha")["details"]["problems"]

    assert len(problems) == 5, problems
    for fragment in (
        "unknown key: extra",
        "missing field: description",
        "type 'cluster'",
        "version '2.0.0'",
        "mod.nu",
    ):
        assert any(fragment in p for p in problems), (fragment, problems)


def test_invalid_one_version_extension(tree: Loader) -> None:
    ext = write_extension(tree.roots[0], "alpha", "1.0.0", versioned=False, metadata="name = ")
    error = tree.error("invalid_extension", "module", "load", "taskserv", "alpha", "--version", "1.0.0")
    assert error["details"]["path"] == str(ext.resolve())
    assert error["details"]["problems"][0].startswith("metadata.toml is not valid TOML")


def test_missing_mod_nu(tree: Loader) -> None:
    ext = write_extension(tree.roots[0], "alpha", "1.0.0")
    (ext / "mod.nu").unlink()
    problems = tree.error("invalid_extension", "module", "load", "taskserv", "alpha")["details"]["problems"]
    assert problems == ["mod.nu missing"]


def test_symlink_inside_the_extension_is_refused(tmp_path: Path, tree: Loader) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the cache")
    ext = write_extension(tree.roots[0], "alpha", "1.0.0", files={"templates/a.txt": "a"})
    (ext / "templates/link.txt").symlink_to(outside)
    (ext / "dirlink").symlink_to(tmp_path)

    problems = tree.error("invalid_extension", "module", "load", "taskserv", "alpha")["details"]["problems"]
    assert sorted(problems) == ["symlink not allowed: dirlink", "symlink not allowed: templates/link.txt"]
    assert not (tree.cache / "taskserv").exists()


def test_special_files_are_refused(tree: Loader) -> None:
    ext = write_extension(tree.roots[0], "alpha", "1.0.0")
    os.mkfifo(ext / "pipe")
    problems = tree.error("invalid_extension", "module", "load", "taskserv", "alpha")["details"]["problems"]
    assert problems == ["not a regular file or folder: pipe"]


def test_symlinked_version_folder_is_refused(tree: Loader) -> None:
    ext = write_extension(tree.roots[0], "alpha", "1.0.0")
    (ext.parent / "1.1.0").symlink_to(ext)
    error = tree.error("invalid_extension", "module", "load", "taskserv", "alpha", "--version", "1.1.0")
    assert error["details"]["problems"] == ["symlink not allowed: ."]


# --- discover -----------------------------------------------------------------------------------------------


def test_discover_a_type(examples: Loader) -> None:
    found = examples.ok("module", "discover", "taskserv", "--output", "json")

    by_name = {a["name"]: a for a in found}
    assert [a["name"] for a in found] == sorted(by_name)
    assert set(by_name) == {"cilium", "containerd", "coredns", "etcd", "kubernetes", "postgres", "redis"}
    kubernetes = by_name["kubernetes"]
    assert set(kubernetes) == {"extension_type", "name", "versions", "latest"}
    assert kubernetes["extension_type"] == "taskserv"
    assert kubernetes["versions"] == ["1.30.0-rc.1", "1.29.2", "1.28.0"]
    assert kubernetes["latest"]["version"] == "1.29.2"
    assert kubernetes["latest"]["dependencies"] == [
        "containerd@^1.7",
        "etcd@>=3.5",
        "cilium@^1.15",
        "coredns",
    ]
    assert by_name["containerd"]["versions"] == ["1.7.13"]
    assert by_name["postgres"]["versions"] == ["16.2.0", "15.6.0"]


def test_discover_one_name(examples: Loader) -> None:
    (found,) = examples.ok("module", "discover", "provider", "--name", "aws", "--output", "json")
    assert found["versions"] == ["2.0.0", "1.5.0"]
    assert found["latest"]["name"] == "aws"
    assert examples.ok("module", "discover", "provider", "--name", "azure") == []


def test_discover_every_type(examples: Loader) -> None:
    found = examples.ok("module", "discover")
    assert {(a["extension_type"], a["name"]) for a in found} >= {
        ("provider", "upcloud"),
        ("taskserv", "redis"),
        ("cluster", "ci-cd"),
    }
    assert not examples.cache.exists()


def test_discovery_survives_broken_siblings(tree: Loader) -> None:
    root = tree.roots[0]
    write_extension(root, "alpha", "1.0.0")
    write_extension(root, "beta", "1.0.0", metadata="this is [not toml")
    write_extension(root, "gamma", "1.0.0", versioned=False, metadata='name = "gamma"\n')
    write_extension(root, "delta", "1.0.0")
    write_extension(root, "delta", "2.0.0", metadata=metadata_toml("delta", "2.0.0", ext_type="cluster"))
    (root / "taskservs/not-an-extension").mkdir()

    result = tree.run("module", "discover", "taskserv")

    assert result.returncode == 0, result.stderr
    found = one_json(result.stdout)
    assert [(a["name"], a["versions"]) for a in found] == [("alpha", ["1.0.0"]), ("delta", ["1.0.0"])]
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3, warnings
    for fragment in ("taskserv beta 1.0.0", "taskserv gamma", "taskserv delta 2.0.0"):
        assert any(fragment in w for w in warnings), (fragment, warnings)


# --- the example tree ---------------------------------------------------------------------------------------


def test_every_example_loads_and_its_dependencies_exist(examples: Loader) -> None:
    available = {(a["extension_type"], a["name"]): a["versions"] for a in examples.ok("module", "discover")}
    assert len(available) == 12

    graph: dict[str, list[str]] = {}
    for (ext_type, name), versions in available.items():
        for version in versions:
            loaded = examples.load(ext_type, name, version)
            assert loaded["digest"] == tree_digest(Path(loaded["path"]))
            node = f"{ext_type}:{name}:{version}"
            graph[node] = []
            for entry in loaded["metadata"]["dependencies"]:
                dep_type, _, rest = entry.rpartition(":")
                dep_name, _, constraint = rest.partition("@")
                dep_type = dep_type or (ext_type if (ext_type, dep_name) in available else "taskserv")
                candidates = available.get((dep_type, dep_name), [])
                spec = sv.SimpleSpec(constraint or "*")
                matching = [v for v in candidates if spec.match(sv.Version(v))]
                assert matching, f"{node}: no {dep_type} {dep_name} matches {entry!r}"
                graph[node] += [f"{dep_type}:{dep_name}:{v}" for v in matching]

    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"dependency cycle: {' -> '.join((*path, node))}"
        if node not in done:
            for dep in graph[node]:
                visit(dep, (*path, node))
            done.add(node)

    for node in graph:
        visit(node, ())


def test_help_and_table_output(examples: Loader) -> None:
    help_text = examples.run()
    assert help_text.returncode == 0 and "module load" in help_text.stdout
    table = examples.run("module", "discover", "taskservs", "--output", "table")
    assert table.returncode == 0 and "kubernetes" in table.stdout and not table.stdout.lstrip().startswith("[")
    missing = examples.run("module", "load", "taskserv", "nope", "--output", "table")
    assert missing.returncode == INVALID and "not_found" in missing.stderr
