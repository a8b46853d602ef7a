"""A registry fetch made for a principal reaches only what the egress proxy allows,
redirects included: skopeo runs in a network namespace whose only way out is the
proxy (``egress/fetch_proxy.py``). Real skopeo, a real registry on loopback, and
a front that redirects blob downloads as registries do (to their storage)."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pyro_mcp.egress import policy as egress_policy
from pyro_mcp.egress.policy import EgressPolicy
from pyro_mcp.environments import images
from tests.environments import images_helper

PASSED_HEADERS = ("Content-Type", "Content-Length", "Docker-Content-Digest", "Location")


@contextlib.contextmanager
def redirecting_front(registry: str, blobs_to: str) -> Iterator[int]:
    """A registry front on every interface: blob downloads answer 307 to ``blobs_to``
    (host:port), everything else is the real ``registry``'s answer."""

    class Front(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, *, body: bool) -> None:
            if "/blobs/sha256:" in self.path and self.command == "GET":
                self.send_response(307)
                self.send_header("Location", f"http://{blobs_to}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            request = urllib.request.Request(
                f"http://{registry}{self.path}",
                method=self.command,
                headers={"Accept": ", ".join(self.headers.get_all("Accept") or [])},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    status, headers, data = answer.status, answer.headers, answer.read()
            except urllib.error.HTTPError as failed:
                status, headers, data = failed.code, failed.headers, failed.read()
            self.send_response(status)
            for name in PASSED_HEADERS:
                if headers.get(name) is not None:
                    self.send_header(name, headers[name])
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("0.0.0.0", 0), Front)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_a_redirect_to_loopback_or_a_private_address_is_refused_when_confined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The registry's name: this machine's own, which Go programs send through
    # their proxy (they skip it only for "localhost" and loopback literals).
    name = socket.gethostname()
    address = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)[0][4][0]
    reference = images_helper.busybox_image(tmp_path / "layout")
    with images_helper.loopback_registry(tmp_path) as registry:
        images_helper.push(reference, f"docker://{registry}/team/bb:7")
        for target, refused in ((registry, None), ("10.255.255.1:5000", "10.255.255.1:5000")):
            with redirecting_front(registry, target) as port:
                source = images.parse_reference(f"{name}:{port}/team/bb:7")

                def fetch(cache: Path, source: images.Reference = source) -> images.Image:
                    return images.ImageStore(cache).fetch(source, lambda _: None, insecure=True)

                if refused is None:
                    # Not confined: skopeo follows the redirect to the loopback registry.
                    assert fetch(tmp_path / "open-cache").layers
                # Confined, as for a principal without private-registry; the front
                # stands in for a public registry (its address counts as public).
                with monkeypatch.context() as patch:
                    patch.setattr(
                        egress_policy,
                        "is_public",
                        lambda ip, real=egress_policy.is_public: ip == address or real(ip),
                    )
                    cache = tmp_path / f"confined-{port}"
                    with (
                        images.confined_fetches(lambda _: EgressPolicy()),
                        pytest.raises(images.ImageError) as failed,
                    ):
                        fetch(cache)
                blobs = cache / "oci" / "blobs" / "sha256"
                found = list(blobs.iterdir()) if blobs.is_dir() else []
                layer_blobs = [b for b in found if b.stat().st_size > 4096]
                assert layer_blobs == [], "a layer arrived through the redirect"
                if refused is None:
                    # Loopback is skopeo's own, empty, in its namespace.
                    assert "connection refused" in str(failed.value).lower(), failed.value
                else:
                    message = str(failed.value)
                    assert f"led to {refused}" in message and "private-registry" in message
