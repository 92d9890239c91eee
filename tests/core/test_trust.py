"""What a loader makes of index records: only what a pinned key allowed for the extension signed is acted on.

Records here are written by hand (tests/registry/signed.py), as a holder of the publisher's password or a hostile
server would write them, and read by a real `Releases` as its follower would hand them over."""

from __future__ import annotations

import base64
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nkeys
import pytest

from service.contract.config import RegistryConfig, TrustedKey
from service.contract.errors import UntrustedExtension
from service.contract.messages import ExtensionType
from service.core.registry_access import RegistryAccess
from service.core.releases import Releases
from service.core.store import ExtensionStore
from service.core.trust import Trust, Verdict
from service.core.versions import Constraint
from service.registry import signing, statements
from service.registry.index import TIMESTAMP_KEY, IndexRecord, Release, encode_record, index_key, object_name
from service.registry.signing import Signer
from service.registry.statements import STATE, TIMESTAMP, StateStatement, TimestampStatement, read, seal
from tests.conftest import make_config, registry_settings
from tests.registry import signed
from tests.registry.signed import WHEN

T = ExtensionType.TASKSERV
C = ExtensionType.CLUSTER
KEY = signed.key()
OTHER = signed.key()
THIRD = signed.key()
CLUSTERS_ONLY = signed.key()
NOT_TRUSTED = "is not one of the keys this loader trusts"


def trusted(*entries: dict[str, Any], **more: Any) -> RegistryConfig:
    keys = entries or ({"key": KEY.public_key}, {"key": CLUSTERS_ONLY.public_key, "types": ["cluster"]})
    settings = {**registry_settings(), "registry.trusted": list(keys), **{f"registry.{k}": v for k, v in more.items()}}
    return make_config("nats://127.0.0.1:4222", Path("/nonexistent"), overrides=settings).registry


def releases(tmp_path: Path, **more: Any) -> Releases:
    return Releases(trusted(**more), tmp_path / ".registry", RegistryAccess())


def v(version: str, *, name: str = "redis", signer: Signer = KEY, **fields: Any) -> Release:
    return signed.release(signer, signed.statement(name, version, **fields))


def judge(record: IndexRecord, **more: Any) -> dict[str, tuple[str | None, bool, bool]]:
    judgement = Trust(trusted(**more).trusted).judge(record)
    return {ver: (verdict.untrusted, verdict.yanked, verdict.blocks) for ver, verdict in judgement.verdicts.items()}


def test_a_record_as_published_is_trusted_whole() -> None:
    record = signed.record(KEY, [v("1.0.0"), v("1.1.0")], sequence=2, yanked=["1.0.0"])
    assert judge(record) == {"1.0.0": (None, True, False), "1.1.0": (None, False, False)}
    assert Trust(trusted().trusted).judge(record).sequence == 2


@pytest.mark.parametrize(
    ("field", "forged"),
    [
        ("digest", "sha256:" + "ee" * 32),
        ("tree_digest", "sha256:" + "ee" * 32),
        ("size", 101),
        ("dependencies", ("taskserv:evil",)),
        ("description", "forged"),
        ("author", "mallory"),
        ("repository", "https://example.invalid"),
        ("published_at", WHEN + timedelta(days=1)),
    ],
    ids=["digest", "tree_digest", "size", "dependencies", "description", "author", "repository", "published_at"],
)
def test_a_plain_copy_that_differs_from_its_signed_statement_is_not_trusted(field: str, forged: object) -> None:
    release = msgspec.structs.replace(v("1.0.0"), **{field: forged})
    untrusted, _, blocks = judge(signed.record(KEY, [release], listed=[v("1.0.0")]))["1.0.0"]
    assert untrusted == f"its index entry does not say what its signed statement says: {field} differ"
    assert blocks  # the signed state lists it: a constraint gets its refusal, never an older version


def test_another_release_s_statement_swapped_in_is_not_the_one_the_state_lists() -> None:
    good, other = v("1.1.0"), v("1.1.0", digest="sha256:" + "ee" * 32)
    swapped = msgspec.structs.replace(good, statement=other.statement, digest=other.digest, object=other.object)
    verdicts = judge(signed.record(KEY, [v("1.0.0"), swapped], listed=[v("1.0.0"), good]))
    assert verdicts["1.1.0"] == ("its statement is not the one its extension's signed state lists", False, True)
    assert verdicts["1.0.0"] == (None, False, False)


def test_a_release_the_signed_state_does_not_list_is_untrusted_and_blocks_nothing() -> None:
    inserted = v("9.0.0", signer=OTHER)
    verdicts = judge(signed.record(KEY, [v("1.0.0"), inserted], listed=[v("1.0.0")]))
    assert verdicts["9.0.0"] == ("it is not in its extension's signed state", False, False)


def test_a_state_signed_by_no_trusted_key_leaves_nothing_of_the_record_trusted() -> None:
    record = signed.record(KEY, [v("1.0.0")], state_signer=OTHER)
    untrusted, _, blocks = judge(record)["1.0.0"]
    assert untrusted == (
        f"its extension's signed state is not trusted: its signer {OTHER.public_key} is not one of the keys this "
        "loader trusts"
    )
    assert not blocks


def test_a_key_limited_to_clusters_signs_no_taskserv_state() -> None:
    record = signed.record(KEY, [v("1.0.0")], state_signer=CLUSTERS_ONLY)
    assert judge(record)["1.0.0"][0] == (
        f"its extension's signed state is not trusted: its signer {CLUSTERS_ONLY.public_key} is trusted here only "
        "for types cluster, not for taskserv redis"
    )


def test_the_state_of_another_extension_is_not_this_one_s() -> None:
    theirs = signed.record(KEY, [v("1.0.0", name="etcd")], name="etcd")
    ours = signed.record(KEY, [v("1.0.0")])
    record = msgspec.structs.replace(ours, state=theirs.state)
    assert judge(record)["1.0.0"][0] == "its extension's signed state is not trusted: it is the state of taskserv etcd"


def test_a_yank_flag_no_key_signed_is_ignored_and_reported() -> None:
    record = signed.record(KEY, [v("1.0.0"), v("1.1.0")], yanked=["1.0.0"])
    flipped = {
        "1.0.0": msgspec.structs.replace(record.releases["1.0.0"], yanked=False),
        "1.1.0": msgspec.structs.replace(record.releases["1.1.0"], yanked=True),
    }
    judgement = Trust(trusted().trusted).judge(msgspec.structs.replace(record, releases=flipped))
    assert {ver: verdict.yanked for ver, verdict in judgement.verdicts.items()} == {"1.0.0": True, "1.1.0": False}
    assert judgement.ignored == [
        "1.0.0: a yanked flag (False) no key signed",
        "1.1.0: a yanked flag (True) no key signed",
    ]


def test_the_old_format_is_refused_unless_accepted() -> None:
    record = signed.record(KEY, [v("1.0.0")])
    old = msgspec.structs.replace(
        record, state=None, releases={"1.0.0": msgspec.structs.replace(record.releases["1.0.0"], statement=None)}
    )
    assert (judge(old)["1.0.0"][0] or "").startswith("it is signed in the old format (v1)")


# --- what Releases does with the judgement ---


def apply(target: Releases, record: IndexRecord) -> None:
    target.apply(index_key(record.extension_type, record.name), encode_record(record))


def test_an_older_signed_state_is_a_rollback_ignored_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = releases(tmp_path)
    apply(target, signed.record(KEY, [v("1.0.0"), v("2.0.0")], sequence=2))
    with caplog.at_level(logging.WARNING):
        apply(target, signed.record(KEY, [v("1.0.0")], sequence=1))
    assert set(target.versions(T, "redis")) == {"1.0.0", "2.0.0"}
    assert target.stats().rollbacks == 1
    assert "sequence 1, older than 2 seen before" in caplog.text


def test_the_highest_sequence_is_remembered_across_a_restart(tmp_path: Path) -> None:
    first = releases(tmp_path)
    apply(first, signed.record(KEY, [v("1.0.0"), v("2.0.0")], sequence=2))
    first.save()
    again = releases(tmp_path)
    again.restore()
    apply(again, signed.record(KEY, [v("1.0.0")], sequence=1))
    assert set(again.versions(T, "redis")) == {"1.0.0", "2.0.0"}
    assert again.stats().rollbacks == 1


def test_a_newest_version_that_cannot_be_trusted_is_refused_never_replaced_by_an_older_one(tmp_path: Path) -> None:
    target = releases(tmp_path)
    good = v("2.0.0")
    broken = msgspec.structs.replace(good, dependencies=("taskserv:evil",))
    apply(target, signed.record(KEY, [v("1.0.0"), broken], listed=[v("1.0.0"), good], sequence=2))
    store = ExtensionStore([], releases=target)
    chosen = store.resolve(T, "redis", Constraint.parse(None))
    assert chosen.version == "2.0.0"
    with pytest.raises(UntrustedExtension):
        chosen.require_trusted()


def test_a_version_the_state_lists_but_the_record_lacks_blocks_older_ones(tmp_path: Path) -> None:
    target = releases(tmp_path)
    apply(target, signed.record(KEY, [v("1.0.0")], listed=[v("1.0.0"), v("2.0.0")], sequence=2))
    chosen = ExtensionStore([], releases=target).resolve(T, "redis", Constraint.parse(">=1,<3"))
    assert chosen.version == "2.0.0"
    assert chosen.untrusted == "it is listed in its extension's signed state, but the index record does not hold it"


def timestamp(signer: Signer, *, age: timedelta, valid: timedelta, sequences: dict[str, int]) -> bytes:
    now = datetime.now(UTC)
    stamp = TimestampStatement(issued_at=now - age, expires_at=now - age + valid, sequences=sequences)
    return msgspec.json.encode(seal(stamp, [signer]))


def test_a_record_older_than_the_signed_timestamp_says_is_ignored(tmp_path: Path) -> None:
    target = releases(tmp_path)
    key = index_key(T, "redis")
    target.apply(TIMESTAMP_KEY, timestamp(KEY, age=timedelta(0), valid=timedelta(days=1), sequences={key: 3}))
    apply(target, signed.record(KEY, [v("1.0.0")], sequence=2))
    assert target.versions(T, "redis") == {}
    assert target.stats().rollbacks == 1


def test_a_timestamp_from_a_key_with_limits_is_not_taken(tmp_path: Path) -> None:
    target = releases(tmp_path, max_age_s=60)
    target.apply(TIMESTAMP_KEY, timestamp(CLUSTERS_ONLY, age=timedelta(0), valid=timedelta(days=1), sequences={}))
    stats = target.stats()
    assert stats.view_age_s is None and stats.unsigned == 1
    assert stats.stale == "no signed timestamp of the index was seen (`extension-loader refresh` signs one)"


def test_freshness_follows_the_newest_signed_timestamp(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = releases(tmp_path, max_age_s=60)
    with caplog.at_level(logging.WARNING):
        target.apply(TIMESTAMP_KEY, timestamp(KEY, age=timedelta(minutes=5), valid=timedelta(days=1), sequences={}))
    stats = target.stats()
    assert stats.stale is not None and "over registry.max_age_s = 60" in stats.stale
    assert stats.view_age_s is not None and 299 < stats.view_age_s < 400
    assert "view of the index is stale" in caplog.text
    target.apply(TIMESTAMP_KEY, timestamp(KEY, age=timedelta(0), valid=timedelta(days=1), sequences={}))
    assert target.stats().stale is None
    target.apply(TIMESTAMP_KEY, timestamp(KEY, age=timedelta(hours=2), valid=timedelta(days=1), sequences={}))
    assert target.stats().stale is None  # an older timestamp never replaces a newer one


def test_an_expired_timestamp_is_stale_whatever_its_age(tmp_path: Path) -> None:
    target = releases(tmp_path, max_age_s=3600)
    target.apply(TIMESTAMP_KEY, timestamp(KEY, age=timedelta(seconds=30), valid=timedelta(seconds=10), sequences={}))
    assert (target.stats().stale or "").startswith("the newest signed timestamp expired at ")


def test_without_max_age_nothing_is_called_stale(tmp_path: Path) -> None:
    target = releases(tmp_path)
    assert target.stats().stale is None and target.stats().view_age_s is None


def test_a_scoped_key_s_cluster_does_not_change_what_a_typed_dependency_means(tmp_path: Path) -> None:
    target = releases(tmp_path)
    web = v("1.0.0", name="web", kind=C, signer=CLUSTERS_ONLY, dependencies=["taskserv:postgres@^16"])
    apply(target, signed.record(CLUSTERS_ONLY, [web], name="web", kind=C))
    postgres = v("1.0.0", name="postgres", kind=C, signer=CLUSTERS_ONLY)
    apply(target, signed.record(CLUSTERS_ONLY, [postgres], name="postgres", kind=C))
    info = target.versions(C, "web")["1.0.0"]
    assert info.untrusted is None
    assert info.metadata is not None and info.metadata.dependencies == ("taskserv:postgres@^16",)


def test_state_statement_types_are_not_interchangeable() -> None:
    state = StateStatement(extension_type=T, name="redis", sequence=1, releases={}, signed_at=WHEN)
    record = signed.record(KEY, [v("1.0.0")])
    stamp_as_state = seal(TimestampStatement(issued_at=WHEN, expires_at=WHEN, sequences={}), [KEY])
    assert judge(msgspec.structs.replace(record, state=stamp_as_state))["1.0.0"][0] is not None
    assert judge(msgspec.structs.replace(record, state=stamp_as_state))["1.0.0"][0] == (
        f"its extension's signed state is not trusted: a statement of type {TIMESTAMP!r}, where {STATE!r} was expected"
    )
    assert seal(state, [KEY]).payload_type != stamp_as_state.payload_type


def test_a_view_growing_older_is_logged_stale_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = releases(tmp_path, max_age_s=60)
    now = datetime.now(UTC)
    target.apply(TIMESTAMP_KEY, timestamp(KEY, age=timedelta(0), valid=timedelta(days=1), sequences={}))
    with caplog.at_level(logging.INFO, logger="service.core.releases"):
        for minutes in (2, 3, 4):
            age, stale = target.freshness(now + timedelta(minutes=minutes))
            assert stale is not None and age is not None and age >= minutes * 60 - 1
        assert target.freshness(now + timedelta(days=2))[1] is not None  # expired: another kind, logged
    said = [r.getMessage() for r in caplog.records if "stale" in r.getMessage()]
    assert len(said) == 2 and "over registry.max_age_s = 60" in said[0] and "expired at" in said[1]


# --- what each refusal says, and whom it names ---


def resealed(record: IndexRecord, *signers: Signer) -> IndexRecord:
    """The record with its state's statement signed again, by `signers` only."""
    assert record.state is not None
    return msgspec.structs.replace(record, state=seal(read(record.state, StateStatement), signers))


def test_an_untrusted_state_leaves_each_version_its_plain_yank_flag() -> None:
    """Nothing of the record is trusted; what it says of yanks is still shown, never acted on."""
    record = signed.record(KEY, [v("1.0.0"), v("1.1.0")], yanked=["1.0.0"], state_signer=OTHER)
    reason = f"its extension's signed state is not trusted: its signer {OTHER.public_key} {NOT_TRUSTED}"
    assert judge(record) == {"1.0.0": (reason, True, False), "1.1.0": (reason, False, False)}


def test_a_state_no_key_signed_names_no_signer_and_one_of_several_names_them_all() -> None:
    record = signed.record(KEY, [v("1.0.0")])
    assert judge(resealed(record))["1.0.0"][0] == (
        f"its extension's signed state is not trusted: its signer (none) {NOT_TRUSTED}"
    )
    both = ", ".join(sorted([OTHER.public_key, THIRD.public_key]))
    assert judge(resealed(record, OTHER, THIRD, OTHER))["1.0.0"][0] == (
        f"its extension's signed state is not trusted: its signer {both} {NOT_TRUSTED}"
    )


def test_a_state_signed_only_by_keys_limited_elsewhere_names_each_limit() -> None:
    """Each pinned entry of a signer, in the configuration's order: a key may be pinned more than once."""
    trust = Trust(
        (
            TrustedKey(key=KEY.public_key),
            TrustedKey(key=OTHER.public_key, types=("cluster",)),
            TrustedKey(key=THIRD.public_key, names=("etcd", "web")),
            TrustedKey(key=OTHER.public_key, types=("cluster", "provider"), names=("web",)),
        )
    )
    judgement = trust.judge(resealed(signed.record(KEY, [v("1.0.0")]), THIRD, OTHER))
    signers = ", ".join(sorted([OTHER.public_key, THIRD.public_key]))
    assert judgement.verdicts["1.0.0"].untrusted == (
        f"its extension's signed state is not trusted: its signer {signers} is trusted here only for types cluster "
        "or names etcd, web or types cluster, provider and names web, not for taskserv redis"
    )
    assert judgement.sequence is None


def test_a_key_limited_to_names_signs_for_those_names_only() -> None:
    trust = Trust((TrustedKey(key=KEY.public_key, names=("redis", "web")),))
    assert trust.judge(signed.record(KEY, [v("1.0.0")])).verdicts["1.0.0"] == Verdict(None, False)
    etcd = trust.judge(signed.record(KEY, [v("1.0.0", name="etcd")], name="etcd"))
    assert etcd.verdicts["1.0.0"].untrusted == (
        f"its extension's signed state is not trusted: its signer {KEY.public_key} is trusted here only for names "
        "redis, web, not for taskserv etcd"
    )


def test_a_release_signed_by_a_key_limited_elsewhere_names_each_of_its_limits() -> None:
    trust = Trust(
        (
            TrustedKey(key=KEY.public_key),
            TrustedKey(key=CLUSTERS_ONLY.public_key, types=("cluster",)),
            TrustedKey(key=CLUSTERS_ONLY.public_key, names=("etcd",)),
        )
    )
    verdict = trust.judge(signed.record(KEY, [v("1.0.0", signer=CLUSTERS_ONLY)])).verdicts["1.0.0"]
    assert verdict == Verdict(
        f"its signer {CLUSTERS_ONLY.public_key} is trusted here only for types cluster or names etcd, not for "
        "taskserv redis",
        yanked=False,
        blocks=True,
    )


def test_a_release_whose_statement_its_named_signer_did_not_sign() -> None:
    """The entry names a trusted key, but the statement is signed by another key, or by none."""
    by_other = msgspec.structs.replace(signed.release(OTHER, signed.statement()), signer=KEY.public_key)
    assert by_other.statement is not None
    unsigned = msgspec.structs.replace(by_other, statement=msgspec.structs.replace(by_other.statement, signatures=()))
    for release in (by_other, unsigned):
        verdicts = judge(signed.record(KEY, [release]))
        assert verdicts["1.0.0"] == ("its signature does not verify", False, True)


def test_a_release_without_a_signer_names_none() -> None:
    """The index's decoding refuses an empty signer; a release made in code is judged the same way."""
    release = msgspec.structs.replace(v("1.0.0"), signer="")
    assert Trust(trusted().trusted).untrusted(T, "redis", release) == f"its signer (none) {NOT_TRUSTED}"


def test_every_field_that_differs_is_named_the_extension_first_the_object_last() -> None:
    etcd = signed.release(KEY, signed.statement("etcd"), description="forged", object="sha256/" + "ee" * 32)
    assert judge(signed.record(KEY, [etcd]))["1.0.0"] == (
        "its index entry does not say what its signed statement says: extension, description, object differ",
        False,
        True,
    )
    moved = msgspec.structs.replace(v("1.0.0"), object="sha256/" + "ee" * 32)
    assert judge(signed.record(KEY, [moved]))["1.0.0"][0] == (
        "its index entry does not say what its signed statement says: object differ"
    )
    cluster = signed.release(KEY, signed.statement(kind=C))
    assert judge(signed.record(KEY, [cluster]))["1.0.0"][0] == (
        "its index entry does not say what its signed statement says: extension differ"
    )


# --- the old format (v1), where registry.accept_v1 allows it ---

USER = nkeys.from_seed(bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)))
USER_KEY = bytes(USER.public_key).decode()
V1_KEYS = (TrustedKey(key=USER_KEY), TrustedKey(key=KEY.public_key, types=("cluster",)))


def v1(version: str, *, signed_as: str | None = None, signer: str = USER_KEY, signature: str | None = None) -> Release:
    """A release of the old format: its identity and archive digest signed by a user key, nothing else."""
    digest = "sha256:" + "ab" * 32
    text = signing.statement("taskserv", "redis", signed_as or version, digest)
    made = base64.urlsafe_b64encode(bytes(USER.sign(text))).rstrip(b"=").decode()
    return Release(
        version=version,
        description=f"redis {version}",
        digest=digest,
        tree_digest="sha256:" + "cd" * 32,
        size=100,
        object=object_name(digest),
        signer=signer,
        signature=made if signature is None else signature,
        published_at=WHEN,
    )


def v1_record(*held: Release, yanked: tuple[str, ...] = ()) -> IndexRecord:
    releases = {r.version: msgspec.structs.replace(r, yanked=r.version in yanked) for r in held}
    return IndexRecord(extension_type=T, name="redis", releases=releases)


def test_the_old_format_is_judged_by_the_old_rules_where_accepted() -> None:
    record = v1_record(
        v1("1.0.0"),
        v1("1.1.0", signed_as="1.0.0"),  # another release's signature
        v1("1.2.0"),
        v1("1.3.0", signature=""),
        v1("1.4.0", signature=v1("1.4.0").signature[:-1]),
        yanked=("1.2.0",),
    )
    judgement = Trust(V1_KEYS, accept_v1=True).judge(record)
    assert judgement.sequence is None and judgement.missing == () and judgement.ignored == []
    assert judgement.verdicts == {
        "1.0.0": Verdict(None, yanked=False),
        "1.1.0": Verdict("its signature does not verify", yanked=False),
        "1.2.0": Verdict(None, yanked=True),  # the plain flag: the old format signed no yank
        "1.3.0": Verdict("its signature does not verify", yanked=False),
        "1.4.0": Verdict("its signature does not verify", yanked=False),
    }


def test_the_old_format_keeps_to_the_same_keys_and_limits() -> None:
    trust = Trust(V1_KEYS, accept_v1=True)
    assert trust.untrusted(T, "redis", v1("1.0.0", signer=OTHER.public_key)) == (
        f"its signer {OTHER.public_key} {NOT_TRUSTED}"
    )
    assert trust.untrusted(T, "redis", v1("1.0.0", signer=KEY.public_key)) == (
        f"its signer {KEY.public_key} is trusted here only for types cluster, not for taskserv redis"
    )
    assert trust.untrusted(T, "etcd", v1("1.0.0")) == "its signature does not verify"  # signed for redis
    assert trust.untrusted(C, "redis", v1("1.0.0")) == "its signature does not verify"


def test_the_old_format_is_refused_with_what_to_do_unless_accepted() -> None:
    """Both ways a release is judged: whole in its record, and alone (as a cold load checks it again)."""
    refusal = (
        "it is signed in the old format (v1), which leaves its metadata unsigned: re-sign it with "
        '`extension-loader resign`, or set registry.accept_v1 = true (README.md, "Registry")'
    )
    trust = Trust(V1_KEYS)
    assert trust.untrusted(T, "redis", v1("1.0.0")) == refusal
    assert trust.judge(v1_record(v1("1.0.0"), yanked=("1.0.0",))).verdicts == {"1.0.0": Verdict(refusal, True)}
    assert Trust(V1_KEYS, accept_v1=True).untrusted(T, "redis", v1("1.0.0")) is None


# --- verifications kept ---


def test_a_record_judged_again_costs_no_second_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[str] = []
    signed_by, verify = statements.signed_by, signing.verify

    def count_signed_by(envelope: statements.Envelope, keys: Any) -> set[str]:
        counted.append(envelope.payload_type)
        return signed_by(envelope, keys)

    def count_verify(public_key: str, message: bytes, signature: str, *, user_keys: bool = False) -> bool:
        counted.append("v1")
        return verify(public_key, message, signature, user_keys=user_keys)

    monkeypatch.setattr(statements, "signed_by", count_signed_by)
    monkeypatch.setattr(signing, "verify", count_verify)
    trust = Trust((*V1_KEYS, TrustedKey(key=KEY.public_key)), accept_v1=True)
    record = signed.record(KEY, [v("1.0.0"), v("1.1.0")])
    old = v1_record(v1("1.0.0"), v1("1.1.0", signature=""))
    for _ in range(3):
        assert {ver: verdict.untrusted for ver, verdict in trust.judge(record).verdicts.items()} == {
            "1.0.0": None,
            "1.1.0": None,
        }
        assert [verdict.untrusted for verdict in trust.judge(old).verdicts.values()] == [
            None,
            "its signature does not verify",
        ]
    assert sorted(counted) == sorted([STATE, statements.RELEASE, statements.RELEASE, "v1"])


def test_what_was_found_for_one_envelope_is_never_taken_for_another() -> None:
    """Verifications are kept by what was signed: a state signed by another key is judged anew."""
    trust = Trust(trusted().trusted)
    record = signed.record(KEY, [v("1.0.0")])
    assert trust.judge(record).verdicts["1.0.0"].untrusted is None
    assert trust.judge(resealed(record, OTHER)).verdicts["1.0.0"].untrusted == (
        f"its extension's signed state is not trusted: its signer {OTHER.public_key} {NOT_TRUSTED}"
    )
    assert trust.judge(resealed(record, KEY, OTHER)).sequence == 1
