"""TLS for the egress proxy: the workspace's own CA, its leaf certificates, and SNI.

A workspace with secrets bound to hosts gets a CA of its own (an EC P-256 key
that never leaves the host, 0600 in the workspace folder). The guest trusts
its certificate; the proxy signs a short-lived certificate for each bound host
it terminates. ``cryptography`` does the X.509 work: it is the library
Python's TLS ecosystem already depends on, and hand-written ASN.1 is not
something to get subtly wrong.

``client_hello_sni`` reads the server name out of a TLS ClientHello so the
proxy can refuse a CONNECT to an allowed name whose TLS asks for another.
"""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

CA_KEY = "ca.key"
CA_CERT = "ca.pem"
LEAF_DAYS = 7
CA_YEARS = 10
# A ClientHello larger than this is not one a real client sends.
MAX_CLIENT_HELLO = 64 * 1024


class NotTLS(Exception):
    """The bytes are not the start of a TLS handshake."""


@dataclass(frozen=True)
class CaFiles:
    key: Path
    cert: Path

    @classmethod
    def in_folder(cls, folder: Path) -> CaFiles:
        return cls(folder / CA_KEY, folder / CA_CERT)

    def exists(self) -> bool:
        return self.key.is_file() and self.cert.is_file()


def create_ca(folder: Path, label: str) -> CaFiles:
    """A new CA under ``folder`` (key 0600); replaces nothing that exists."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    files = CaFiles.in_folder(folder)
    if files.exists():
        return files
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pyro"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"pyro egress CA {label}"[:64]),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        files.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_private(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


class LeafIssuer:
    """Server-side SSL contexts for hosts, signed by one workspace CA (cached per host)."""

    def __init__(self, ca: CaFiles, scratch: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        self._ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
        self._ca_key = key
        self._chains: dict[str, Path] = {}
        self._folder = Path(tempfile.mkdtemp(prefix="egress-leaves-", dir=scratch))

    def context_for(self, host: str, asked: list[str]) -> ssl.SSLContext:
        """A server context for ``host``; a ClientHello naming another host is refused.

        The name the client asked for (if any) is appended to ``asked``.
        """
        if host not in self._chains:
            self._chains[host] = self._make_chain(host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # Only HTTP/1.1 is spoken on a terminated connection.
        context.set_alpn_protocols(["http/1.1"])
        context.load_cert_chain(self._chains[host])

        def check_name(_: object, server_name: str | None, __: object) -> int | None:
            if server_name is None:
                return None
            asked.append(server_name)
            if server_name.lower().rstrip(".") != host:
                return ssl.ALERT_DESCRIPTION_ACCESS_DENIED
            return None

        context.sni_callback = check_name
        return context

    def _make_chain(self, host: str) -> Path:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        # load_cert_chain reads a file: a 0600 one in the proxy's private folder.
        chain = self._folder / f"leaf-{len(self._chains)}.pem"
        _write_private(
            chain,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + cert.public_bytes(serialization.Encoding.PEM)
            + self._ca_cert.public_bytes(serialization.Encoding.PEM),
        )
        return chain

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


def record_length(head: bytes) -> int | None:
    """The full length of the TLS record ``head`` starts (None: need 5 bytes first)."""
    if head[:1] != b"\x16":
        raise NotTLS()
    if len(head) < 5:
        return None
    if head[1] != 3:
        raise NotTLS()
    return 5 + int.from_bytes(head[3:5], "big")


def client_hello_sni(record: bytes) -> str | None:
    """The server name in a ClientHello record (None if it names none).

    Raises NotTLS for anything that is not a well-formed ClientHello. Every
    length is checked against what is there: the bytes come from the guest.
    """
    reader = _Reader(record)
    if reader.take(1) != b"\x16":
        raise NotTLS()
    reader.take(2)  # record version
    body = _Reader(reader.take(reader.int(2)))
    if body.take(1) != b"\x01":  # handshake type: ClientHello
        raise NotTLS()
    hello = _Reader(body.take(body.int(3)))
    hello.take(2 + 32)  # client version, random
    hello.take(hello.int(1))  # session id
    hello.take(hello.int(2))  # cipher suites
    hello.take(hello.int(1))  # compression methods
    if hello.remaining() == 0:
        return None
    extensions = _Reader(hello.take(hello.int(2)))
    while extensions.remaining():
        kind = extensions.int(2)
        data = _Reader(extensions.take(extensions.int(2)))
        if kind != 0:  # server_name
            continue
        names = _Reader(data.take(data.int(2)))
        while names.remaining():
            name_type = names.int(1)
            name = names.take(names.int(2))
            if name_type == 0:
                try:
                    return name.decode("ascii").lower().rstrip(".")
                except UnicodeDecodeError as exc:
                    raise NotTLS() from exc
    return None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def remaining(self) -> int:
        return len(self._data) - self._at

    def take(self, size: int) -> bytes:
        if size < 0 or self._at + size > len(self._data):
            raise NotTLS()
        chunk = self._data[self._at : self._at + size]
        self._at += size
        return chunk

    def int(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")
