"""Release keys (ed25519, written as NATS nkeys): seed files, public keys, signatures and their verification.

A publisher keeps a seed (`SO...`) in a file only its owner may read; a loader pins the public keys (`O...`) it
trusts in its configuration. A release key is an nkey of the *operator* type, which nats-server refuses for a
user's login, so no NATS server can ever ask a client to sign its login nonce with one: a user key (`SU...`,
`U...`) is refused here with what to do instead. What is signed is the registry's statements
(`statements.py`); `statement(...)` is the old format's text (v1: identity and archive digest only), still
verified where `registry.accept_v1` allows it, with the user keys that signed it. nkeys 0.2.1 cannot make
seeds nor verify from a public key alone: both are done here, on PyNaCl.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from pathlib import Path

import nacl.exceptions
import nacl.signing
import nkeys

_SEED_LENGTH = 58  # "SO" + base32 of 2 prefix bytes, 32 key bytes and a CRC16, unpadded
_SEED_FILE_LIMIT = _SEED_LENGTH * 2  # the seed, its line end and some white space around it; never more
_PUBLIC_KEY_LENGTH = 56  # base32 of a prefix byte, 32 key bytes and a CRC16
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{86}")  # 64 bytes in unpadded base64url


class SigningKeyError(Exception):
    """A seed file or a public key that cannot be used; the message says why and, where it can, what to do."""


_PREFIX = nkeys.PREFIX_BYTE_OPERATOR  # release keys: 'O...', seeds 'SO...'
_KEY_HELP = 'make a release key with `extension-loader keygen FILE` (README.md, "Registry")'


class Signer:
    """Signs with one release seed. `public_key` is the `O...` key a loader pins to trust what it signs."""

    __slots__ = ("_keys", "public_key")

    def __init__(self, keys: nkeys.KeyPair) -> None:
        self._keys = keys
        self.public_key: str = bytes(keys.public_key).decode()

    @classmethod
    def from_seed(cls, seed: bytes) -> Signer:
        """A signer from a `SO...` seed; SigningKeyError for anything else (the message never quotes it)."""
        _check_seed(seed)
        return cls(nkeys.from_seed(seed))

    def sign(self, message: bytes) -> str:
        """The ed25519 signature of the message, in unpadded base64url."""
        signature = bytes(self._keys.sign(message))
        return base64.urlsafe_b64encode(signature).rstrip(b"=").decode()

    def __repr__(self) -> str:
        return f"Signer({self.public_key})"


def new_seed() -> bytes:
    """A new random release seed, `SO...`."""
    return bytes(nkeys.encode_seed(os.urandom(32), _PREFIX))


def write_seed(path: Path) -> str:
    """Writes a new seed (and a newline) to a new file only its owner may read, and returns its public key. An
    existing file is never overwritten: it may be the only copy of a key."""
    seed = new_seed()
    public_key = Signer.from_seed(seed).public_key
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise SigningKeyError(f"{path} already exists; a key file is never overwritten") from None
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot be written ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, 0o600)  # whatever the umask left
            file.write(seed + b"\n")
            file.flush()
            os.fsync(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return public_key


def read_seed(path: Path) -> Signer:
    """The signer of a seed file. Refuses a file that others may read or write, as ssh does with its keys, and a
    file that holds anything but the seed and white space around it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO would block the open
    except FileNotFoundError:
        raise SigningKeyError(f"{path}: no such seed file") from None
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SigningKeyError(f"{path}: not a regular file")
        if mode & 0o077:
            raise SigningKeyError(
                f"{path} may be used by others (mode {stat.S_IMODE(mode):04o}); a seed must be private: "
                f"chmod 600 {path}"
            )
        content = os.read(fd, _SEED_FILE_LIMIT + 1)  # one byte past the limit tells a longer file
    finally:
        os.close(fd)
    if len(content) > _SEED_FILE_LIMIT:
        raise SigningKeyError(
            f"{path}: not a release seed (over {_SEED_FILE_LIMIT} bytes, where a seed file holds one line of "
            f"{_SEED_LENGTH} characters starting with SO)"
        )
    seed = content.strip()
    try:
        return Signer.from_seed(seed)
    except SigningKeyError as exc:
        raise SigningKeyError(f"{path}: {exc}") from None


def public_key_bytes(text: str, *, user_keys: bool = False) -> bytes:
    """The 32 raw bytes of an `O...` release key, after checking its length, encoding, kind and checksum. A
    user key (`U...`) only with `user_keys`: the old format's signatures were made with them."""
    if len(text) != _PUBLIC_KEY_LENGTH:
        raise SigningKeyError(
            f"public key {text!r}: {len(text)} characters, where a public key has {_PUBLIC_KEY_LENGTH}"
        )
    try:
        raw = base64.b32decode(text)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 35:
        raise SigningKeyError(f"public key {text!r}: not base32 (A-Z and 2-7)")
    if not _crc_matches(raw):
        raise SigningKeyError(f"public key {text!r}: the checksum does not match (a typing error?)")
    if raw[0] == nkeys.PREFIX_BYTE_USER and not user_keys:
        raise SigningKeyError(
            f"public key {text!r} is a NATS user key, which a client logs in with: a server could have it sign "
            f"anything as its login nonce, so it is never trusted to sign releases; {_KEY_HELP}, publish with it "
            "(or re-sign with `extension-loader resign`) and trust its O... key instead"
        )
    if raw[0] not in (_PREFIX, nkeys.PREFIX_BYTE_USER):
        raise SigningKeyError(f"public key {text!r}: not a release key (one starts with O)")
    return raw[1:33]


def verify(public_key: str, message: bytes, signature: str, *, user_keys: bool = False) -> bool:
    """Whether `signature` is the key's signature of `message`. False for any bad signature, bad encoding or
    length (what the index holds is not trusted); SigningKeyError only for a malformed public key (and for a
    user key unless `user_keys`)."""
    key = nacl.signing.VerifyKey(public_key_bytes(public_key, user_keys=user_keys))
    if not _SIGNATURE.fullmatch(signature):
        return False
    raw = base64.urlsafe_b64decode(signature + "==")
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != signature:
        return False  # unused bits set: another spelling of the same bytes
    try:
        key.verify(message, raw)
    except (nacl.exceptions.CryptoError, ValueError):
        return False
    return True


def statement(extension_type: str, name: str, version: str, digest: str) -> bytes:
    """What the old format (v1) signed for one release. No part may hold a line break, which would let two
    releases share one statement."""
    parts = (str(extension_type), name, version, digest)
    if any("\n" in part or "\r" in part for part in parts):
        raise ValueError(f"a line break in a release's identity: {parts!r}")
    return "extension-loader release v1\n{}\n{}\n{}\n{}\n".format(*parts).encode()


def _check_seed(seed: bytes) -> None:
    """nkeys checks neither a seed's length nor its checksum: a damaged seed would load as another key."""
    if seed.startswith(b"SU") and len(seed) == _SEED_LENGTH:
        raise SigningKeyError(
            "a NATS user seed (SU...), which a client logs in with: a server could have it sign anything as its "
            f"login nonce, so it never signs releases; {_KEY_HELP}"
        )
    if len(seed) != _SEED_LENGTH or not seed.startswith(b"SO"):
        raise SigningKeyError(f"not a release seed (one line of {_SEED_LENGTH} characters starting with SO)")
    try:
        raw = base64.b32decode(seed + b"======")
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 36:
        raise SigningKeyError("not a release seed (not base32)")
    if not _crc_matches(raw):
        raise SigningKeyError("a damaged release seed (the checksum does not match)")
    prefix = (raw[0] & 0b111) << 5 | raw[1] >> 3
    if raw[0] & 0b11111000 != nkeys.PREFIX_BYTE_SEED or prefix != _PREFIX:
        raise SigningKeyError("not a release seed (wrong prefix bytes)")


def _crc_matches(raw: bytes) -> bool:
    return int(nkeys.crc16(raw[:-2])) == int.from_bytes(raw[-2:], "little")
