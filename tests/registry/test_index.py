"""The index: records as JSON, keys and object names, and how a record grows by a release or a yank."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.contract.messages import NAME_PATTERN, ExtensionType
from service.registry.index import (
    VERSION,
    AlreadyPublished,
    IndexRecord,
    IndexRecordInvalid,
    NoSuchRelease,
    Release,
    decode_record,
    encode_record,
    index_key,
    object_name,
    parse_index_key,
    with_release,
    with_yank,
)

T = ExtensionType.TASKSERV
HEX = "0123456789abcdef" * 4
SIGNER = "UAHWRFW226PFETMX5SPL3WLSTTB2RM46MBKKFENOS6DD7V3EFJELZUCD"
WHEN = datetime(2025, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)
KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
NAMES = st.from_regex(NAME_PATTERN, fullmatch=True).filter(lambda n: len(n) <= 64 and not n.endswith("\n"))


def release(version: str = "1.28.0", **changes: object) -> Release:
    fields: dict[str, object] = {
        "version": version,
        "description": "Kubernetes container orchestrator",
        "dependencies": ("containerd@^1.7", "etcd@>=3.5"),
        "author": "provisioning-team",
        "repository": None,
        "digest": f"sha256:{HEX}",
        "tree_digest": f"sha256:{HEX[::-1]}",
        "size": 12345,
        "object": f"sha256/{HEX}",
        "signer": SIGNER,
        "signature": "A" * 86,
        "published_at": WHEN,
    }
    return Release(**(fields | changes))  # type: ignore[arg-type]


def record(*versions: str) -> IndexRecord:
    out: IndexRecord | None = None
    for version in versions:
        out = with_release(out, T, "kubernetes", release(version))
    assert out is not None
    return out


# --- records ---


def test_a_record_round_trips_as_json() -> None:
    original = with_yank(record("1.28.0", "1.29.2", "1.30.0-rc.1+build.5"), "1.29.2", True)
    data = encode_record(original)
    assert decode_record(data) == original
    doc = msgspec.json.decode(data)
    assert doc["extension_type"] == "taskserv"
    assert list(doc["releases"]) == ["1.28.0", "1.29.2", "1.30.0-rc.1+build.5"]
    first = doc["releases"]["1.28.0"]
    assert first["published_at"] == "2025-03-01T12:30:05.123456Z"
    assert first["dependencies"] == ["containerd@^1.7", "etcd@>=3.5"]
    assert first["yanked"] is False and doc["releases"]["1.29.2"]["yanked"] is True
    assert set(first) == {
        "version",
        "description",
        "dependencies",
        "author",
        "repository",
        "digest",
        "tree_digest",
        "size",
        "object",
        "signer",
        "signature",
        "published_at",
        "yanked",
        "statement",
    }
    assert set(doc) == {"extension_type", "name", "releases", "state"}


def test_the_same_record_encodes_to_the_same_bytes() -> None:
    assert encode_record(record("1.28.0", "1.29.2")) == encode_record(record("1.28.0", "1.29.2"))


def test_unknown_fields_and_optional_ones_are_taken() -> None:
    """A newer publisher may add fields; an older one may leave out what has a default."""
    doc = msgspec.json.decode(encode_record(record("1.28.0")))
    doc["mirrors"] = ["somewhere"]
    doc["releases"]["1.28.0"]["provenance"] = {"builder": "ci"}
    for field in ("dependencies", "author", "repository", "yanked"):
        del doc["releases"]["1.28.0"][field]
    decoded = decode_record(msgspec.json.encode(doc))
    only = decoded.releases["1.28.0"]
    assert (only.dependencies, only.author, only.repository, only.yanked) == ((), None, None, False)
    assert only.digest == f"sha256:{HEX}"


def test_a_time_in_another_zone_is_the_same_instant() -> None:
    doc = msgspec.json.decode(encode_record(record("1.28.0")))
    doc["releases"]["1.28.0"]["published_at"] = "2025-03-01T14:30:05.123456+02:00"
    decoded = decode_record(msgspec.json.encode(doc)).releases["1.28.0"].published_at
    assert decoded == WHEN and decoded.utcoffset() == timedelta(hours=2)
    assert decoded.tzinfo == timezone(timedelta(hours=2))


def _changed(path: str, value: object) -> bytes:
    doc = msgspec.json.decode(encode_record(record("1.28.0")))
    target = doc
    *parents, last = path.split(".")
    for part in parents:
        target = target[part.replace("=", ".")]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return msgspec.json.encode(doc)


_DELETE = object()
R = "releases.1=28=0"  # "=" stands for "." inside a key


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "Input data was truncated"),
        (b"{", "Input data was truncated"),
        (b"not json", "malformed"),
        (b"[]", "Expected `object`, got `array`"),
        (b"null", "Expected `object`, got `null`"),
        (_changed("extension_type", "taskservs"), "Invalid enum value 'taskservs'"),
        (_changed("extension_type", "Taskserv"), "Invalid enum value 'Taskserv'"),
        (_changed("name", "Kubernetes"), "'Kubernetes' is not an extension name"),
        (_changed("name", "kube..rnetes"), "'kube..rnetes' is not an extension name"),
        (_changed("name", "kubernetes\n"), "is not an extension name"),
        (_changed("name", "k" * 65), "is not an extension name"),
        (_changed("name", _DELETE), "missing required field `name`"),
        (_changed("releases", []), "Expected `object`, got `array`"),
        (
            _changed(
                "releases", {"1.29.0": msgspec.json.decode(encode_record(record("1.28.0")))["releases"]["1.28.0"]}
            ),
            "the release under '1.29.0' is version '1.28.0'",
        ),
        (_changed(f"{R}.version", "1.28"), "`$.releases[...].version`"),
        (_changed(f"{R}.version", "../../etc"), "`$.releases[...].version`"),
        (_changed(f"{R}.digest", "sha256:" + HEX.upper()), "`$.releases[...].digest`"),
        (_changed(f"{R}.digest", f"sha256:{HEX}\n"), "`$.releases[...].digest`"),
        (_changed(f"{R}.digest", f"md5:{HEX[:32]}"), "`$.releases[...].digest`"),
        (_changed(f"{R}.tree_digest", _DELETE), "missing required field `tree_digest`"),
        (_changed(f"{R}.size", -1), "Expected `int` >= 0"),
        (_changed(f"{R}.size", "12"), "Expected `int`, got `str`"),
        (_changed(f"{R}.object", f"sha256:{HEX}"), "`$.releases[...].object`"),
        (_changed(f"{R}.signer", "SU" + "A" * 56), "`$.releases[...].signer`"),
        (_changed(f"{R}.signer", SIGNER.lower()), "`$.releases[...].signer`"),
        (_changed(f"{R}.signature", None), "Expected `str`, got `null`"),
        (_changed(f"{R}.published_at", "2025-03-01T12:30:05"), "Expected `datetime` with a timezone component"),
        (_changed(f"{R}.published_at", "yesterday"), "Invalid RFC3339 encoded datetime"),
        (_changed(f"{R}.yanked", "no"), "Expected `bool`, got `str`"),
        (_changed(f"{R}.dependencies", "etcd"), "Expected `array`, got `str`"),
    ],
)
def test_a_bad_record_says_what_is_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(IndexRecordInvalid) as info:
        decode_record(data)
    assert reason in info.value.reason, info.value.reason
    assert str(info.value) == f"invalid index record: {info.value.reason}"


# --- keys and object names ---


@pytest.mark.parametrize(
    ("extension_type", "name", "key"),
    [
        (T, "kubernetes", "taskserv.kubernetes"),
        ("taskserv", "foo.bar", "taskserv.foo=2ebar"),
        (ExtensionType.PROVIDER, "upcloud", "provider.upcloud"),
        ("cluster", "a.b.", "cluster.a=2eb=2e"),
        ("cluster", "web_0-x", "cluster.web_0-x"),
    ],
)
def test_index_keys(extension_type: ExtensionType | str, name: str, key: str) -> None:
    assert index_key(extension_type, name) == key
    assert parse_index_key(key) == (ExtensionType(extension_type), name)


@given(extension_type=st.sampled_from(ExtensionType), name=NAMES)
def test_every_name_has_a_key_that_gives_it_back(extension_type: ExtensionType, name: str) -> None:
    key = index_key(extension_type, name)
    assert KEY.fullmatch(key)
    assert "" not in key.split(".")  # no empty token: nats would refuse it, or worse, time out
    assert len(key.split(".")) == 2
    assert parse_index_key(key) == (extension_type, name)


@pytest.mark.parametrize(
    ("extension_type", "name"),
    [
        ("taskservs", "kubernetes"),
        ("Taskserv", "kubernetes"),
        ("module", "kubernetes"),
        ("taskserv", ""),
        ("taskserv", ".hidden"),
        ("taskserv", "a..b"),
        ("taskserv", "Kubernetes"),
        ("taskserv", "kube rnetes"),
        ("taskserv", "kube*"),
        ("taskserv", "kube>"),
        ("taskserv", "kube/x"),
        ("taskserv", "kube=2ex"),
        ("taskserv", "kubernetes\n"),
        ("taskserv", "k" * 65),
    ],
)
def test_no_key_for_what_is_not_a_type_and_a_name(extension_type: str, name: str) -> None:
    with pytest.raises(ValueError):
        index_key(extension_type, name)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "taskserv",
        "taskserv.",
        ".kubernetes",
        "taskserv..kubernetes",
        "taskserv.kube.rnetes",  # a dot in a name is always written =2e
        "taskservs.kubernetes",
        "module.kubernetes",
        "Taskserv.kubernetes",
        "taskserv.Kubernetes",
        "taskserv.kube=2Ernetes",
        "taskserv.kube=rnetes",
        "taskserv.kube=2e=2ernetes",  # "kube..rnetes"
        "taskserv.=2ekube",
        "taskserv.kube rnetes",
        "taskserv.kube*",
        "taskserv.>",
        "taskserv.kube/rnetes",
        "taskserv.kubernetes\n",
        "taskserv." + "k" * 65,
    ],
)
def test_a_key_that_index_key_would_not_make_is_refused(key: str) -> None:
    with pytest.raises(ValueError):
        parse_index_key(key)


def test_object_names() -> None:
    assert object_name(f"sha256:{HEX}") == f"sha256/{HEX}"
    for bad in (f"sha256/{HEX}", f"sha256:{HEX[:-1]}", f"sha256:{HEX.upper()}", f"sha256:{HEX}\n", f"sha512:{HEX}", ""):
        with pytest.raises(ValueError, match="not a sha256 digest"):
            object_name(bad)


# --- changes ---


def test_with_release_adds_a_version_and_changes_nothing_else() -> None:
    first = with_release(None, "taskserv", "kubernetes", release("1.28.0"))
    assert first == IndexRecord(extension_type=T, name="kubernetes", releases={"1.28.0": release("1.28.0")})
    second = with_release(first, T, "kubernetes", release("1.29.2"))
    assert list(second.releases) == ["1.28.0", "1.29.2"]
    assert list(first.releases) == ["1.28.0"]  # the old record is left as it was
    assert second.releases["1.28.0"] is first.releases["1.28.0"]


def test_a_version_is_published_once() -> None:
    published = record("1.28.0")
    with pytest.raises(AlreadyPublished) as info:
        with_release(published, T, "kubernetes", release("1.28.0", description="another"))
    assert isinstance(info.value, ValueError)
    assert str(info.value) == "taskserv kubernetes 1.28.0 is already published"
    assert published.releases["1.28.0"].description == "Kubernetes container orchestrator"


def test_with_release_keeps_to_its_own_extension() -> None:
    published = record("1.28.0")
    for extension_type, name in ((T, "etcd"), (ExtensionType.CLUSTER, "kubernetes")):
        with pytest.raises(ValueError, match="is not the one of"):
            with_release(published, extension_type, name, release("1.29.0"))
    for kind, bad_name in (("taskservs", "etcd"), ("taskserv", "Etcd"), ("taskserv", "a..b")):
        with pytest.raises(ValueError):
            with_release(None, kind, bad_name, release("1.29.0"))


def test_yank_and_unyank() -> None:
    published = record("1.28.0", "1.29.2")
    yanked = with_yank(published, "1.28.0", True)
    assert yanked.releases["1.28.0"].yanked and not published.releases["1.28.0"].yanked
    assert yanked.releases["1.29.2"] is published.releases["1.29.2"]
    assert list(yanked.releases) == ["1.28.0", "1.29.2"]
    assert with_yank(yanked, "1.28.0", False) == published
    assert with_yank(yanked, "1.28.0", True) == yanked


def test_yank_of_a_version_that_is_not_there() -> None:
    with pytest.raises(NoSuchRelease) as info:
        with_yank(record("1.28.0", "1.29.2"), "1.30.0", True)
    assert isinstance(info.value, KeyError)
    assert str(info.value) == "taskserv kubernetes has no release 1.30.0 (published: 1.28.0, 1.29.2)"
    assert (info.value.version, info.value.available) == ("1.30.0", ("1.28.0", "1.29.2"))


@pytest.mark.parametrize(
    "version",
    ["1.28.0", "0.0.1", "10.20.30", "1.0.0-alpha", "1.0.0-rc.1", "1.0.0-x-y.7", "1.0.0+build.5", "2.0.0-0.3+sha.ab"],
)
def test_versions_that_a_release_may_have(version: str) -> None:
    assert re.match(VERSION, version)
    assert decode_record(encode_record(record(version))).releases[version].version == version


@pytest.mark.parametrize(
    "version", ["", "1.28", "v1.28.0", "01.2.3", "1.2.3-", "1.2.3+", "1.2.3-a..b", "..", "1.2.3/x", "1.2.3\n", "latest"]
)
def test_versions_that_a_release_may_not_have(version: str) -> None:
    assert not re.match(VERSION, version)
    with pytest.raises(IndexRecordInvalid, match="version"):
        decode_record(encode_record(record("1.28.0")).replace(b'"1.28.0"', msgspec.json.encode(version)))
