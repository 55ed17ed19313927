"""Certificates for the TLS tests: a throwaway CA, server and client certificates, as PEM files.

Made fresh per test module with ``cryptography`` (EC P-256 keys: fast to generate). Keys are
written 0600 (libpq refuses a client key with group or world access, PostgreSQL a server key).
``give_to_postgres`` copies files where the ``postgres`` OS user can read them, for a test
cluster's ``ssl_cert_file``. Nothing here is fit for real deployments.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=30)
SERVER_NAMES = ("localhost", "127.0.0.1")
WRONG_NAMES = ("db.invalid",)


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsFiles:
    """Everything a TLS test needs, in one directory."""

    directory: Path
    ca: Path  # signed everything below except other_ca
    other_ca: Path  # an unrelated CA, for verification failures
    server: CertPair  # SAN localhost + 127.0.0.1
    wrong_host_server: CertPair  # SAN db.invalid only: passes verify-ca, fails verify-full
    client_bench: CertPair  # CN=bench, for PostgreSQL's `cert` authentication
    client_app: CertPair  # CN=app_scram, for client_tls_sslmode=verify-ca


@dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory / "ca", "pgbalancer test CA")
    _make_ca(directory / "other-ca", "unrelated test CA")
    return TlsFiles(
        directory=directory,
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        server=_make_leaf(directory / "server", ca, "pgbalancer test server", SERVER_NAMES, server=True),
        wrong_host_server=_make_leaf(
            directory / "wrong-host", ca, "db.invalid", ("db.invalid",), server=True
        ),
        client_bench=_make_leaf(directory / "client-bench", ca, "bench", (), server=False),
        client_app=_make_leaf(directory / "client-app", ca, "app_scram", (), server=False),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca(stem: Path, common_name: str) -> _Issuer:
    key = _new_key()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(stem.with_suffix(".pem"), cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return _Issuer(name, key)


def _make_leaf(
    stem: Path, issuer: _Issuer, common_name: str, names: tuple[str, ...], *, server: bool
) -> CertPair:
    key = _new_key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
    cert = builder.sign(issuer.key, hashes.SHA256())
    pair = CertPair(stem.parent / f"{stem.name}.crt", stem.parent / f"{stem.name}.key")
    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(pair.key, key_pem, 0o600)
    return pair


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def give_to_postgres(files: list[Path], directory: Path) -> list[Path]:
    """Copies of ``files`` in ``directory`` (made reachable), owned by the postgres OS user, 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    entry = pwd.getpwnam("postgres")
    copies = []
    for source in files:
        target = directory / source.name
        shutil.copyfile(source, target)
        target.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(target, entry.pw_uid, entry.pw_gid)
        copies.append(target)
    return copies
