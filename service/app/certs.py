"""A development certificate authority and the NATS server's certificate it signs: TLS where traffic leaves the
machine (docker-compose.yml, deploy/cluster), made by `extension-loader certs DIR`.

DIR holds four files:

    ca.pem           the CA's certificate: what clients trust (`nats.tls_ca`, `--tls-ca`/NATS_CA, `nats --tlsca`)
    ca-key.pem       the CA's private key (mode 0600): it signs the server certificate, nothing else needs it
    server-cert.pem  the server's certificate, for the host names and addresses clients dial; it also serves as
                     a client certificate, because a cluster node shows it when it dials the others' routes
    server-key.pem   its private key (mode 0600)

`ensure` is idempotent, so it can run at every start: a file that is there and still good is kept; one that is
missing, unreadable, expires within `RENEW_WITHIN`, or no longer fits (a key that is not the certificate's, a
server certificate that the CA did not sign or that names other hosts) is made anew, and the answer says which
and why. A new CA means a new server certificate, and clients must trust the new ca.pem.

The keys are ECDSA P-256, which nats-server (Go), nats-py (OpenSSL) and the `nats` CLI all accept.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .cert_settings import CA_CERT as CA_CERT
from .cert_settings import CA_KEY as CA_KEY
from .cert_settings import DEFAULT_DAYS as DEFAULT_DAYS
from .cert_settings import DEFAULT_HOSTS as DEFAULT_HOSTS
from .cert_settings import RENEW_WITHIN as RENEW_WITHIN
from .cert_settings import SERVER_CERT as SERVER_CERT
from .cert_settings import SERVER_KEY as SERVER_KEY
from .cert_settings import check_host as check_host

# Containers and hosts whose clocks are a little behind still accept a certificate made a moment ago.
BACKDATE = dt.timedelta(minutes=5)

# Keys that can sign a certificate: ours are EC, a CA put in the folder by hand may have another.
_SIGNING_KEYS = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)


@dataclass(frozen=True)
class Renewal:
    """One pair of files made anew (`files`: a certificate and its key), and why."""

    files: tuple[str, str]
    reason: str

    def __str__(self) -> str:
        return f"{' and '.join(self.files)}: {self.reason}"


def ensure(
    folder: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    days: int = DEFAULT_DAYS,
    now: dt.datetime | None = None,
) -> list[Renewal]:
    """Makes what is missing or no longer good in `folder` (created if need be); returns what it made, and why.

    New certificates are valid for `days` days (more than `RENEW_WITHIN`, or they would be renewed at every
    start), a server certificate never beyond its CA. Raises OSError when the folder cannot be written.
    """
    if dt.timedelta(days=days) <= RENEW_WITHIN:
        raise ValueError(
            f"days: {days} is not more than {RENEW_WITHIN.days}; such certificates would be renewed at once"
        )
    names = list(dict.fromkeys(check_host(h) for h in hosts))
    if not names:
        raise ValueError("no host name: the server certificate must name at least one")
    now = now or dt.datetime.now(dt.UTC)
    folder.mkdir(parents=True, exist_ok=True)
    made: list[Renewal] = []

    ca, ca_key, why = _read_pair(folder, CA_CERT, CA_KEY, now)
    if ca is not None and ca_key is not None and why is None and not _is_ca(ca):
        why = f"{CA_CERT} is not a CA certificate"
    if ca is None or ca_key is None or why is not None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _make_ca(ca_key, now, days)
        _write_pair(folder, CA_CERT, ca, CA_KEY, ca_key)
        made.append(Renewal((CA_CERT, CA_KEY), why or "missing"))

    cert, key, why = _read_pair(folder, SERVER_CERT, SERVER_KEY, now)
    if made and cert is not None:
        why = "the CA is new"
    elif cert is not None and why is None:
        why = _misfit(cert, ca, names)
    if cert is None or key is None or why is not None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _make_server(key, names, ca, ca_key, now, days)
        _write_pair(folder, SERVER_CERT, cert, SERVER_KEY, key)
        made.append(Renewal((SERVER_CERT, SERVER_KEY), why or "missing"))

    for name in (CA_KEY, SERVER_KEY):  # a key left readable by others (copied in by hand) is closed again
        if (folder / name).stat().st_mode & 0o077:
            os.chmod(folder / name, 0o600)
    return made


def describe(folder: Path) -> str:
    """What the server certificate in `folder` is good for: its names and its last day."""
    cert = x509.load_pem_x509_certificate((folder / SERVER_CERT).read_bytes())
    return f"{', '.join(_names(cert))}, valid until {cert.not_valid_after_utc:%Y-%m-%d}"


# --- reading -----------------------------------------------------------------------------------------------------


def _read_pair(
    folder: Path, cert_name: str, key_name: str, now: dt.datetime
) -> tuple[x509.Certificate | None, CertificateIssuerPrivateKeyTypes | None, str | None]:
    """A certificate and its key as found, and the reason to make them anew (None: they are good)."""
    if not (folder / cert_name).exists() or not (folder / key_name).exists():
        missing = [n for n in (cert_name, key_name) if not (folder / n).exists()]
        return None, None, "missing" if len(missing) == 2 else f"{missing[0]} missing"
    try:
        cert = x509.load_pem_x509_certificate((folder / cert_name).read_bytes())
    except ValueError:
        return None, None, f"{cert_name} is not a PEM certificate"
    try:
        key = serialization.load_pem_private_key((folder / key_name).read_bytes(), password=None)
    except (ValueError, TypeError):
        return None, None, f"{key_name} is not an unencrypted PEM private key"
    if not isinstance(key, _SIGNING_KEYS) or _public(key) != _public(cert):
        return cert, None, f"{key_name} is not the key of {cert_name}"
    ends = cert.not_valid_after_utc
    if ends <= now:
        return cert, key, f"expired on {ends:%Y-%m-%d}"
    if ends - now <= RENEW_WITHIN:
        return cert, key, f"expires on {ends:%Y-%m-%d}, within {RENEW_WITHIN.days} days"
    if cert.not_valid_before_utc > now + BACKDATE:
        return cert, key, f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return cert, key, None


def _misfit(cert: x509.Certificate, ca: x509.Certificate, names: Sequence[str]) -> str | None:
    """Why a good server certificate does not fit this CA and these host names (None: it fits)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return f"not signed by the CA in {CA_CERT}"
    has = _names(cert)
    if set(has) != set(names):
        return f"it names {', '.join(has) or 'no host'}, not {', '.join(names)}"
    return None


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return [*san.get_values_for_type(x509.DNSName), *ips]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _public(item: CertificateIssuerPrivateKeyTypes | x509.Certificate) -> bytes:
    return item.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- making ------------------------------------------------------------------------------------------------------


def _make_ca(key: ec.EllipticCurvePrivateKey, now: dt.datetime, days: int) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "extension-loader development CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_server(
    key: ec.EllipticCurvePrivateKey,
    names: Sequence[str],
    ca: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    alternatives: list[x509.GeneralName] = []
    for n in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alternatives.append(x509.DNSName(n))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        # serverAuth for clients; clientAuth because a cluster node shows it when it dials another's route
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority(ca, ca_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _authority(ca: x509.Certificate, ca_key: CertificateIssuerPrivateKeyTypes) -> x509.AuthorityKeyIdentifier:
    """Names the CA's key the way the CA names it itself (its subject key identifier), which is how a verifier
    finds the issuer; Python's strict verification (3.13) requires it."""
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# --- writing -----------------------------------------------------------------------------------------------------


def _write_pair(
    folder: Path, cert_name: str, cert: x509.Certificate, key_name: str, key: ec.EllipticCurvePrivateKey
) -> None:
    """The key first (0600), then the certificate (0644: clients and the loaders' user read ca.pem), each written
    aside and renamed into place: a reader never sees half a file, and a run cut short between the two leaves a
    key that is not the certificate's, which the next run notices and makes anew."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(folder / key_name, pem, 0o600)
    _write(folder / cert_name, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600, whatever the umask
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
