"""The host's certificate authorities, for guests with egress.

Where the host trusts an extra CA (a TLS-intercepting proxy, a corporate CA),
a fresh guest does not, and every TLS client in it fails with
CERTIFICATE_VERIFY_FAILED. pyro installs the host's bundle into the guest's
trust store instead.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

MAX_BUNDLE_BYTES = 4 * 1024 * 1024
PEM_MARKER = b"-----BEGIN CERTIFICATE-----"
# Variables that name the bundle the host's own TLS clients use, most specific first.
BUNDLE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "CURL_CA_BUNDLE")


def host_ca_bundle() -> bytes | None:
    """The PEM bundle the host trusts, or None if none can be read."""
    paths = get_paths()
    for path in paths:
        try:
            data = path.read_bytes()[: MAX_BUNDLE_BYTES + 1]
        except OSError:
            continue
        if PEM_MARKER in data and len(data) <= MAX_BUNDLE_BYTES:
            return data
    return None


def get_paths() -> list[Path]:
    candidates = [os.environ.get(name, "") for name in BUNDLE_VARIABLES]
    defaults = ssl.get_default_verify_paths()
    candidates += [defaults.cafile or "", defaults.openssl_cafile or ""]
    return [Path(c) for c in candidates if c]
