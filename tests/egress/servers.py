"""Test servers on the host's 127.0.0.1 (plain and TLS) and a CA that signs them."""

from __future__ import annotations

import datetime
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVER_NAMES = ("host.pyro.internal", "localhost")


@dataclass
class LocalCA:
    """A CA, a server certificate it signed, and a bundle of it plus the system's CAs."""

    folder: Path

    def __post_init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyro test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAMES[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in SERVER_NAMES]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        self.server_pem = self.folder / "server.pem"
        self.server_pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        system = Path(ssl.get_default_verify_paths().openssl_cafile)
        base = system.read_bytes() if system.is_file() else b""
        self.bundle = self.folder / "bundle.pem"
        self.bundle.write_bytes(base.rstrip(b"\n") + b"\n" + self.ca_pem)


@dataclass
class Recorder:
    """What a test server was sent."""

    requests: list[dict[str, Any]] = field(default_factory=list)


def _handler(recorder: Recorder, echo: bool, big: int) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
            recorder.requests.append(seen)
            if self.path == "/big" and big:
                self.send_response(200)
                self.send_header("Content-Length", str(big))
                self.end_headers()
                chunk = b"x" * 65536
                for _ in range(big // len(chunk)):
                    self.wfile.write(chunk)
                self.wfile.write(b"x" * (big % len(chunk)))
                return
            body = json.dumps(seen if echo else {"ok": True, "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serve(ca: LocalCA | None, *, echo: bool = True, big: int = 0) -> Iterator[tuple[int, Recorder]]:
    """An HTTP(S) server on 127.0.0.1 that records requests and echoes them back.

    With ``big``, ``/big`` answers that many bytes.
    """
    recorder = Recorder()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder, echo, big))
    if ca is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ca.server_pem)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], recorder
    finally:
        server.shutdown()
        server.server_close()
