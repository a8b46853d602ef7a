"""The guest's network set-up: the host's CAs, the egress proxy and the package
index settings (standard library only)."""

from __future__ import annotations

import base64
import contextlib
import os
from typing import Any

try:
    from pyro_mcp.agent import protocol
    from pyro_mcp.guest import commands, fileops, processes, system
except ImportError:  # inside the guest, beside this file
    import commands  # type: ignore[import-not-found,no-redef]
    import fileops  # type: ignore[import-not-found,no-redef]
    import processes  # type: ignore[import-not-found,no-redef]
    import protocol  # type: ignore[import-not-found,no-redef]
    import system  # type: ignore[import-not-found,no-redef]

RequestError = fileops.RequestError


SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HOST_CA_COPY = "/usr/local/share/ca-certificates/pyro-host-bundle.crt"
CA_ENV = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
)


def op_trust_ca(args: dict[str, Any]) -> dict[str, Any]:
    """Add the host's CA bundle to the system trust store; point TLS clients at it."""
    bundle = _pem_arg(args, "bundle")
    system.write_bytes(HOST_CA_COPY, bundle)
    return _rebuild_trust()


def _pem_arg(args: dict[str, Any], name: str) -> bytes:
    try:
        pem = base64.b64decode(str(args.get(name, "")), validate=True)
    except ValueError as exc:
        raise RequestError("bad_args", f"{name} is not base64") from exc
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise RequestError("bad_args", f"{name} holds no PEM certificate")
    return pem


def _rebuild_trust() -> dict[str, Any]:
    """The system bundle: the image's own, then the host's CAs, then the egress CA."""
    original = b""
    if os.path.exists(SYSTEM_CA_BUNDLE + ".pyro-orig"):
        with open(SYSTEM_CA_BUNDLE + ".pyro-orig", "rb") as handle:
            original = handle.read()
    elif os.path.exists(SYSTEM_CA_BUNDLE):
        with open(SYSTEM_CA_BUNDLE, "rb") as handle:
            original = handle.read()
        system.write_bytes(SYSTEM_CA_BUNDLE + ".pyro-orig", original)
    parts = [original.rstrip(b"\n")]
    for path in (HOST_CA_COPY, EGRESS_CA_COPY):
        if os.path.exists(path):
            with open(path, "rb") as handle:
                parts.append(handle.read().rstrip(b"\n"))
    system.write_bytes(SYSTEM_CA_BUNDLE, b"\n".join(parts) + b"\n")
    for name in CA_ENV:
        commands.BASE_ENV[name] = SYSTEM_CA_BUNDLE
    return {"path": SYSTEM_CA_BUNDLE, "env": list(CA_ENV)}


EGRESS_CA_COPY = "/usr/local/share/ca-certificates/pyro-egress-ca.crt"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
NO_PROXY = "localhost,127.0.0.1,::1"
CONNECT_HELPER = "/usr/local/bin/pyro-connect"
# ssh (and so git over ssh) reaches hosts through the proxy with CONNECT.
CONNECT_HELPER_SOURCE = r"""#!/usr/bin/python3
# pyro-connect HOST PORT: a byte pipe to HOST:PORT through pyro's egress proxy
# (ssh's ProxyCommand; the guest has no other way out).
import os, select, socket, sys

host, port = sys.argv[1], sys.argv[2]
proxy = os.environ.get("PYRO_EGRESS_PROXY", "http://10.0.2.100:3128")
address, _, proxy_port = proxy.rstrip("/").rpartition("/")[2].rpartition(":")
s = socket.create_connection((address, int(proxy_port)), timeout=30)
s.sendall(("CONNECT %s:%s HTTP/1.1\r\nHost: %s:%s\r\n\r\n" % (host, port, host, port)).encode())
head = b""
while b"\r\n\r\n" not in head and len(head) < 65536:
    data = s.recv(4096)
    if not data:
        break
    head += data
status, _, rest = head.partition(b"\r\n\r\n")
first = status.split(b"\r\n")[0]
if first.split(b" ")[1:2] != [b"200"]:
    sys.stderr.write("pyro-connect: " + first.decode(errors="replace") + "\n")
    sys.stderr.write(rest.decode(errors="replace"))
    sys.exit(1)
s.settimeout(None)
if rest:
    os.write(1, rest)
reading = True
while True:
    ready, _, _ = select.select([s, 0] if reading else [s], [], [])
    if s in ready:
        data = s.recv(65536)
        if not data:
            break
        os.write(1, data)
    if reading and 0 in ready:
        data = os.read(0, 65536)
        if data:
            s.sendall(data)
        else:
            reading = False
            s.shutdown(socket.SHUT_WR)
"""


def connect_command(
    agent_argv: list[str] | None = None, image_python: str = "/usr/bin/python3"
) -> str:
    """How ssh starts the CONNECT helper: by its ``#!/usr/bin/python3`` line, or in
    an image without that Python the way init started this agent: the runtime
    drive's loader, library path and interpreter (``init.sh`` spells them once;
    ``agent_argv`` defaults to this process's own command line)."""
    if agent_argv is None:
        try:
            with open("/proc/self/cmdline", "rb") as handle:
                agent_argv = handle.read().decode(errors="replace").split("\0")
        except OSError:
            agent_argv = []
    through_loader = bool(agent_argv) and agent_argv[0].endswith("/ld-linux-x86-64.so.2")
    if os.path.exists(image_python) or not through_loader or len(agent_argv) < 4:
        return CONNECT_HELPER
    loader, flag, libraries, python = agent_argv[:4]
    return f"{loader} {flag} {libraries} {python} -E -s {CONNECT_HELPER}"


def op_egress(args: dict[str, Any]) -> dict[str, Any]:
    """Send every client through the host's egress proxy; trust the workspace's CA.

    The guest's network reaches only the proxy, so DNS points at nothing: a
    lookup fails at once rather than after resolver timeouts.
    """
    proxy = str(args.get("proxy", ""))
    if not proxy.startswith("http://") or any(c.isspace() for c in proxy) or '"' in proxy:
        raise RequestError("bad_args", "proxy must be an http:// URL")
    for name in PROXY_VARIABLES:
        commands.BASE_ENV[name] = proxy
    commands.BASE_ENV["no_proxy"] = commands.BASE_ENV["NO_PROXY"] = NO_PROXY
    commands.BASE_ENV["PYRO_EGRESS_PROXY"] = proxy
    # Node 24+ reads the proxy variables for fetch() when asked to.
    commands.BASE_ENV["NODE_USE_ENV_PROXY"] = "1"
    system.write_file(
        "/etc/apt/apt.conf.d/80pyro-egress",
        f'Acquire::http::Proxy "{proxy}";\nAcquire::https::Proxy "{proxy}";\n',
    )
    system.write_file(
        "/etc/environment",
        "".join(
            f"{name}={commands.BASE_ENV[name]}\n"
            for name in (*PROXY_VARIABLES, "no_proxy", "NO_PROXY")
        ),
    )
    system.write_file("/etc/resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    os.makedirs(os.path.dirname(CONNECT_HELPER), exist_ok=True)
    system.write_file(CONNECT_HELPER, CONNECT_HELPER_SOURCE)
    with contextlib.suppress(OSError):
        os.chmod(CONNECT_HELPER, 0o755)
    with contextlib.suppress(OSError):
        os.makedirs("/etc/ssh/ssh_config.d", exist_ok=True)
        system.write_file(
            "/etc/ssh/ssh_config.d/pyro-egress.conf",
            f"Host *\n    ProxyCommand {connect_command()} %h %p\n",
        )
    trusted = None
    if args.get("ca"):
        system.write_bytes(EGRESS_CA_COPY, _pem_arg(args, "ca"))
        trusted = _rebuild_trust()["path"]
    return {"proxy": proxy, "trusted": trusted}


def forget_egress() -> None:
    """Remove what ``op_egress`` wrote into the root filesystem, if a saved
    environment carries it: without a network here, it would point at nothing."""
    for path in (
        "/etc/apt/apt.conf.d/80pyro-egress",
        "/etc/ssh/ssh_config.d/pyro-egress.conf",
        CONNECT_HELPER,
    ):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    with contextlib.suppress(OSError):
        with open("/etc/environment", encoding="utf-8") as handle:
            lines = [line for line in handle.read().splitlines() if line.strip()]
        ours = (*PROXY_VARIABLES, "no_proxy", "NO_PROXY")
        if lines and all(line.split("=", 1)[0] in ours for line in lines):
            system.write_file("/etc/environment", "")
    if os.path.exists(EGRESS_CA_COPY):
        os.unlink(EGRESS_CA_COPY)
        _rebuild_trust()


def op_package_index(args: dict[str, Any]) -> dict[str, Any]:
    """Use the host's package index settings: pip.conf, npm's registry, index variables."""
    written = []
    pip_conf = args.get("pip_conf")
    if isinstance(pip_conf, str) and pip_conf:
        system.write_file("/etc/pip.conf", pip_conf)
        written.append("/etc/pip.conf")
    registry = args.get("npm_registry")
    if isinstance(registry, str) and registry and "\n" not in registry:
        # root's, and an image environment's own user's (its HOME) when that is another
        for home in sorted({"/root", commands.BASE_ENV.get("HOME", "/root")}):
            npmrc = os.path.join(home, ".npmrc")
            system.write_file(npmrc, f"registry={registry}\n")
            if home != "/root" and processes.IMAGE_USER is not None:
                with contextlib.suppress(OSError):
                    os.chown(npmrc, *processes.IMAGE_USER)
            written.append(npmrc)
    env = args.get("env") or {}
    if not isinstance(env, dict):
        raise RequestError("bad_args", "env must map names to strings")
    for name, value in env.items():
        if name in protocol.PACKAGE_VARIABLES and isinstance(value, str) and "\n" not in value:
            commands.BASE_ENV[name] = value
    return {"written": written, "env": sorted(n for n in env if n in protocol.PACKAGE_VARIABLES)}
