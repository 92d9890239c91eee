"""Signing: seed files kept private, public keys checked to the last character, signatures bound to a release."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from pathlib import Path

import nkeys
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.contract.messages import ExtensionType
from service.registry.signing import (
    Signer,
    SigningKeyError,
    new_seed,
    public_key_bytes,
    read_seed,
    statement,
    verify,
    write_seed,
)

DIGEST = "sha256:" + "ab" * 32
STATEMENT = statement("taskserv", "kubernetes", "1.28.0", DIGEST)
SIGNER = Signer.from_seed(new_seed())
OTHER = Signer.from_seed(new_seed())
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def test_the_statement_is_the_designed_text() -> None:
    assert f"extension-loader release v1\ntaskserv\nkubernetes\n1.28.0\n{DIGEST}\n".encode() == STATEMENT
    assert statement(ExtensionType.TASKSERV, "kubernetes", "1.28.0", DIGEST) == STATEMENT


@pytest.mark.parametrize("line_break", ["\n", "\r"], ids=["lf", "cr"])
@pytest.mark.parametrize("part", range(4), ids=["type", "name", "version", "digest"])
def test_no_line_break_in_a_statement(part: int, line_break: str) -> None:
    """Line breaks would let ("a\\nb", "c") and ("a", "b\\nc") share one statement, and so one signature."""
    parts = ["taskserv", "kubernetes", "1.28.0", DIGEST]
    parts[part] += line_break + "x"
    with pytest.raises(ValueError, match="line break"):
        statement(*parts)


def test_seeds_are_release_seeds_of_the_operator_type() -> None:
    """Release keys are operator-type nkeys, which nats-server never takes for a user's login."""
    seed = new_seed()
    assert len(seed) == 58 and seed.startswith(b"SO")
    assert new_seed() != seed
    signer = Signer.from_seed(seed)
    assert len(signer.public_key) == 56 and signer.public_key.startswith("O")
    assert signer.public_key == nkeys.from_seed(seed).public_key.decode()
    # The repr shows the public key only: never the seed (a public key may well contain "SU" by chance).
    assert repr(signer) == f"Signer({signer.public_key})"
    assert seed.decode() not in repr(signer)


def test_the_old_format_s_user_keys_verify_only_when_asked_for() -> None:
    """Releases of the old format (v1) were signed with user keys: `registry.accept_v1` verifies them."""
    user = nkeys.from_seed(bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)))
    public = bytes(user.public_key).decode()
    signature = base64.urlsafe_b64encode(bytes(user.sign(STATEMENT))).rstrip(b"=").decode()
    assert verify(public, STATEMENT, signature, user_keys=True)
    assert not verify(public, STATEMENT + b"x", signature, user_keys=True)
    with pytest.raises(SigningKeyError, match="is a NATS user key"):
        verify(public, STATEMENT, signature)
    assert len(public_key_bytes(public, user_keys=True)) == 32


def test_a_user_key_is_refused_with_what_to_do_instead() -> None:
    user = _other_kind(nkeys.PREFIX_BYTE_USER)
    with pytest.raises(SigningKeyError) as info:
        public_key_bytes(user)
    assert str(info.value) == (
        f"public key {user!r} is a NATS user key, which a client logs in with: a server could have it sign anything "
        "as its login nonce, so it is never trusted to sign releases; make a release key with `extension-loader "
        'keygen FILE` (README.md, "Registry"), publish with it (or re-sign with `extension-loader resign`) and trust '
        "its O... key instead"
    )


def test_round_trip() -> None:
    signature = SIGNER.sign(STATEMENT)
    assert len(signature) == 86 and "=" not in signature
    assert len(base64.urlsafe_b64decode(signature + "==")) == 64
    assert verify(SIGNER.public_key, STATEMENT, signature)


def test_a_signature_is_bound_to_its_key_and_statement() -> None:
    signature = SIGNER.sign(STATEMENT)
    assert not verify(OTHER.public_key, STATEMENT, signature)  # another key
    for other in (
        statement("taskserv", "kubernetes", "1.28.1", DIGEST),
        statement("taskserv", "kubernetes-evil", "1.28.0", DIGEST),
        statement("cluster", "kubernetes", "1.28.0", DIGEST),
        statement("taskserv", "kubernetes", "1.28.0", "sha256:" + "cd" * 32),
        STATEMENT + b"\n",
    ):
        assert not verify(SIGNER.public_key, other, signature)
    # a signature swapped in from another release, or from another signer of this one
    assert not verify(SIGNER.public_key, STATEMENT, SIGNER.sign(statement("taskserv", "etcd", "1.28.0", DIGEST)))
    assert not verify(SIGNER.public_key, STATEMENT, OTHER.sign(STATEMENT))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: "",
        lambda s: s[:-1],
        lambda s: s + "A",
        lambda s: s + "==",
        lambda s: s.replace("_", "/").replace("-", "+") if ("_" in s or "-" in s) else s[:-1] + "!",
        lambda s: s[:10] + " " + s[11:],
        lambda s: s[:-1] + BASE32[(BASE32.index(s[-1]) + 1) % 32] if s[-1] in BASE32 else s[:-1] + "B",
        lambda s: ("B" if s[0] != "B" else "C") + s[1:],
        lambda s: "é" * 86,
        lambda s: base64.urlsafe_b64encode(bytes(64)).decode().rstrip("="),
    ],
    ids=[
        "empty",
        "one-short",
        "one-more",
        "padded",
        "standard-alphabet",
        "a-space",
        "last-changed",
        "first-changed",
        "not-ascii",
        "zero-bytes",
    ],
)
def test_a_bad_signature_is_false_never_an_error(mangle: Callable[[str], str]) -> None:
    signature = SIGNER.sign(STATEMENT)
    bad = mangle(signature)
    assert bad != signature
    assert verify(SIGNER.public_key, STATEMENT, bad) is False


def test_unused_bits_give_no_second_spelling_of_a_signature() -> None:
    """86 characters carry 516 bits for 512: a last character differing only in the unused bits decodes to
    the same bytes, and is refused, so there is one spelling of each signature."""
    signature = SIGNER.sign(STATEMENT)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    spelling = signature[:-1] + alphabet[last | 0b0011 if last & 0b0011 == 0 else last & ~0b0011]
    assert base64.urlsafe_b64decode(spelling + "==") == base64.urlsafe_b64decode(signature + "==")
    assert not verify(SIGNER.public_key, STATEMENT, spelling)


def test_public_key_bytes() -> None:
    raw = public_key_bytes(SIGNER.public_key)
    assert len(raw) == 32
    assert raw == base64.b32decode(SIGNER.public_key)[1:33]


@given(position=st.integers(0, 55), shift=st.integers(1, 31))
def test_a_one_character_typo_in_a_public_key_is_caught(position: int, shift: int) -> None:
    key = SIGNER.public_key
    typo = key[:position] + BASE32[(BASE32.index(key[position]) + shift) % 32] + key[position + 1 :]
    with pytest.raises(SigningKeyError):
        public_key_bytes(typo)
    with pytest.raises(SigningKeyError):
        verify(typo, STATEMENT, SIGNER.sign(STATEMENT))


def _other_kind(prefix: int) -> str:
    """A key of another kind (an account, a server, a byte that is no kind) with a valid checksum."""
    body = bytearray([prefix]) + base64.b32decode(SIGNER.public_key)[1:33]
    return base64.b32encode(bytes(body) + nkeys.crc16_checksum(body)).decode()


@pytest.mark.parametrize(
    ("key", "check"),
    [
        ("", "0 characters"),
        (SIGNER.public_key[:-1], "55 characters"),
        (SIGNER.public_key + "A", "57 characters"),
        (SIGNER.public_key.lower(), "not base32"),
        ("O" + SIGNER.public_key[1:].lower(), "not base32"),
        (SIGNER.public_key[:10] + "1" + SIGNER.public_key[11:], "not base32"),
        (SIGNER.public_key[:-4] + "====", "not base32"),
        (SIGNER.public_key[:-1] + "é", "not base32"),
        (_other_kind(nkeys.PREFIX_BYTE_ACCOUNT), "not a release key (one starts with O)"),
        (_other_kind(nkeys.PREFIX_BYTE_SERVER), "not a release key (one starts with O)"),
        (_other_kind(nkeys.PREFIX_BYTE_OPERATOR | 1), "not a release key (one starts with O)"),
        (_other_kind(nkeys.PREFIX_BYTE_USER), "is a NATS user key, which a client logs in with"),
        (SIGNER.public_key[:-1] + ("A" if SIGNER.public_key[-1] != "A" else "B"), "checksum does not match"),
    ],
    ids=[
        "empty",
        "one-short",
        "one-more",
        "lower-case",
        "lower-case-after-O",
        "digit-1",
        "padded",
        "not-ascii",
        "account-key",
        "server-key",
        "no-kind-prefix",
        "user-key",
        "checksum",
    ],
)
def test_a_malformed_public_key_says_what_is_wrong(key: str, check: str) -> None:
    with pytest.raises(SigningKeyError, match=check.replace("(", r"\(").replace(")", r"\)")):
        public_key_bytes(key)
    with pytest.raises(SigningKeyError):
        verify(key, STATEMENT, SIGNER.sign(STATEMENT))


# --- seed files ---


def test_seed_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "publisher.nk"
    with_umask = os.umask(0o022)
    try:
        public_key = write_seed(path)
    finally:
        os.umask(with_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_bytes()
    assert text.startswith(b"SO") and text.endswith(b"\n") and len(text) == 59
    signer = read_seed(path)
    assert signer.public_key == public_key
    assert verify(public_key, STATEMENT, signer.sign(STATEMENT))


def test_a_seed_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "publisher.nk"
    public_key = write_seed(path)
    before = path.read_bytes()
    with pytest.raises(SigningKeyError, match="already exists"):
        write_seed(path)
    assert path.read_bytes() == before
    assert read_seed(path).public_key == public_key
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SigningKeyError, match="already exists"):
        write_seed(tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o660, 0o666], ids=lambda mode: f"{mode:04o}")
def test_a_seed_file_others_may_use_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "publisher.nk"
    write_seed(path)
    path.chmod(mode)
    with pytest.raises(SigningKeyError) as info:
        read_seed(path)
    assert f"chmod 600 {path}" in str(info.value)
    assert f"{mode:04o}" in str(info.value)


def test_a_missing_seed_file(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="no such seed file"):
        read_seed(tmp_path / "missing.nk")
    (tmp_path / "folder").mkdir(mode=0o700)
    with pytest.raises(SigningKeyError, match="not a regular file"):
        read_seed(tmp_path / "folder")
    (tmp_path / "plain").write_text("")
    with pytest.raises(SigningKeyError, match="cannot be read"):
        read_seed(tmp_path / "plain" / "below")
    with pytest.raises(SigningKeyError, match="cannot be written"):
        write_seed(tmp_path / "no-folder" / "publisher.nk")
    os.mkfifo(tmp_path / "fifo", 0o600)  # refused at once, not waited on for a writer
    with pytest.raises(SigningKeyError, match="not a regular file"):
        read_seed(tmp_path / "fifo")


def _damaged(seed: bytes) -> bytes:
    last = BASE32[(BASE32.index(chr(seed[20])) + 1) % 32].encode()
    return seed[:20] + last + seed[21:]


def _seed_of(prefix: int) -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), prefix))


NOT_A_SEED = "not a release seed (one line of 58 characters starting with SO)"
TOO_LONG = "not a release seed (over 116 bytes, where a seed file holds one line of 58 characters starting with SO)"
USER_SEED = (
    "a NATS user seed (SU...), which a client logs in with: a server could have it sign anything as its login "
    'nonce, so it never signs releases; make a release key with `extension-loader keygen FILE` (README.md, "Registry")'
)


def _release_seed_with_second_byte(second: int) -> bytes:
    """A seed that starts with SO and has a valid checksum, but whose second prefix byte is not the operator's
    (128: the two bits that spell the O are kept, the rest changed)."""
    raw = bytes([nkeys.PREFIX_BYTE_SEED | nkeys.PREFIX_BYTE_OPERATOR >> 5, second]) + os.urandom(32)
    raw += int(nkeys.crc16(raw)).to_bytes(2, "little")
    seed = base64.b32encode(raw).rstrip(b"=")
    assert seed.startswith(b"SO") and len(seed) == 58
    return seed


@pytest.mark.parametrize(
    ("content", "check"),
    [
        (b"", NOT_A_SEED),
        (b"garbage\n", NOT_A_SEED),
        (b"\xff\xfe" * 29, NOT_A_SEED),
        (new_seed()[:-1], NOT_A_SEED),
        (new_seed() + b"AAAA", NOT_A_SEED),
        (new_seed() + b"\n" + new_seed()[:56], NOT_A_SEED),
        (new_seed() + b"\n" + new_seed(), TOO_LONG),
        (new_seed() + b"\n" * 58 + b"x", TOO_LONG),
        (new_seed() + b"\n" + b" " * 4096, TOO_LONG),
        (b"SO" + b"1" * 56, "not a release seed (not base32)"),
        (_damaged(new_seed()), "a damaged release seed (the checksum does not match)"),
        (_seed_of(nkeys.PREFIX_BYTE_ACCOUNT), NOT_A_SEED),
        (_seed_of(nkeys.PREFIX_BYTE_USER), USER_SEED),
        (_release_seed_with_second_byte(136), "not a release seed (wrong prefix bytes)"),
        (_release_seed_with_second_byte(144), "not a release seed (wrong prefix bytes)"),
        (SIGNER.public_key.encode(), NOT_A_SEED),
    ],
    ids=[
        "empty",
        "garbage",
        "not-utf8",
        "one-short",
        "four-more",
        "two-lines",
        "two-seeds",
        "anything-past-116-bytes",
        "white-space-past-116-bytes",
        "digit-1",
        "checksum",
        "account-seed",
        "user-seed",
        "so-but-prefix-byte-136",
        "so-but-prefix-byte-144",
        "public-key",
    ],
)
def test_a_seed_file_that_holds_no_release_seed(tmp_path: Path, content: bytes, check: str) -> None:
    path = tmp_path / "publisher.nk"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(SigningKeyError, match=check.replace("(", r"\(").replace(")", r"\)")) as info:
        read_seed(path)
    assert str(path) in str(info.value)
    assert str(info.value) == f"{path}: {check}"  # the whole reason: a later check must not be the one that refuses
    if content.startswith((b"SU", b"SO")):
        assert content.decode(errors="replace")[:20] not in str(info.value)  # the seed is never quoted


def test_a_seed_with_spaces_around_it_reads(tmp_path: Path) -> None:
    seed = new_seed()
    path = tmp_path / "publisher.nk"
    path.write_bytes(b"  " + seed + b"\r\n\n")
    path.chmod(0o400)
    assert read_seed(path).public_key == Signer.from_seed(seed).public_key


def test_a_seed_file_of_116_bytes_reads(tmp_path: Path) -> None:
    """The limit: the seed and white space up to 116 bytes in all; one byte more is refused (above)."""
    seed = new_seed()
    path = tmp_path / "publisher.nk"
    path.write_bytes(seed + b"\n" + b" " * 57)
    path.chmod(0o600)
    assert len(path.read_bytes()) == 116
    assert read_seed(path).public_key == Signer.from_seed(seed).public_key


def test_a_failed_seed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails after the file is created removes it: a half-written key file would be read later."""

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    path = tmp_path / "publisher.nk"
    with pytest.raises(OSError, match="No space left"):
        write_seed(path)
    assert not path.exists()


def test_a_seed_file_is_private_from_its_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is 0600 from the moment it exists, whatever the umask, not only after the fchmod that follows: a
    file open to others for a moment could be opened by them then, and read once the seed is in it."""
    modes: list[int] = []
    fchmod = os.fchmod

    def spy(fd: int, mode: int) -> None:
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        fchmod(fd, mode)

    monkeypatch.setattr(os, "fchmod", spy)
    with_umask = os.umask(0)
    try:
        write_seed(tmp_path / "publisher.nk")
    finally:
        os.umask(with_umask)
    assert modes == [0o600]
    assert stat.S_IMODE((tmp_path / "publisher.nk").stat().st_mode) == 0o600
