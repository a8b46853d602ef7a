"""The host's package index settings, for guests with egress.

Where the host installs Python or Node packages through a mirror or a private
index, a fresh guest would try the public defaults instead. pyro carries the
host's settings in: pip's index options from its configuration files and
environment, uv's and npm's index variables, npm's registry. Settings whose
URL carries credentials stay on the host (the guest is untrusted); the
warning names them.
"""

from __future__ import annotations

import configparser
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pyro_mcp import host_tools
from pyro_mcp.agent.protocol import PACKAGE_VARIABLES
from pyro_mcp.errors import PyroError

log = logging.getLogger("pyro.workspaces")

# Variables copied into the guest's command environment when the host has them
# (the guest agent takes exactly these).
VARIABLES = PACKAGE_VARIABLES
PIP_KEYS = ("index-url", "extra-index-url", "trusted-host")
MAX_VALUE_CHARS = 2048


@dataclass
class IndexSettings:
    """What the guest gets: environment variables, a pip.conf and an npmrc."""

    env: dict[str, str] = field(default_factory=dict)
    pip: dict[str, str] = field(default_factory=dict)
    npm_registry: str | None = None
    withheld: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.env or self.pip or self.npm_registry)

    def hosts(self) -> list[str]:
        """The index hosts these settings name (``host`` or ``host:port``), in order."""
        words = [w for value in self.env.values() for w in value.split()]
        words += [w for key, value in self.pip.items() for w in value.split()]
        words += [self.npm_registry] if self.npm_registry else []
        found: list[str] = []
        for word in words:
            # UV_INDEX entries may be NAME=URL; trusted-host entries are bare hosts.
            url = word.split("=", 1)[1] if "=" in word and "://" not in word.split("=")[0] else word
            parts = urlsplit(url if "://" in url else f"//{url}")
            try:
                host, port = parts.hostname, parts.port
            except ValueError:
                continue
            if host:
                entry = f"{host}:{port}" if port else host
                if entry not in found:
                    found.append(entry)
        return found

    def pip_conf(self) -> str:
        if not self.pip:
            return ""
        return "[global]\n" + "".join(f"{k} = {v}\n" for k, v in self.pip.items())


def host_settings(environ: dict[str, str] | None = None, home: Path | None = None) -> IndexSettings:
    """The host's package index settings that may go into a guest."""
    environ = dict(os.environ) if environ is None else environ
    home = Path.home() if home is None else home
    settings = IndexSettings()
    for name in VARIABLES:
        value = environ.get(name)
        if value and _shareable(name, value, settings):
            settings.env[name] = value
    for path in _pip_config_files(environ, home):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            for key in PIP_KEYS:
                value = parser.get(section, key, fallback="").strip()
                if value and _shareable(f"{path} {key}", value, settings):
                    settings.pip[key] = " ".join(value.split())  # later files win, as in pip
    registry = environ.get("NPM_CONFIG_REGISTRY") or _npm_registry(home / ".npmrc")
    if registry and _shareable("npm registry", registry, settings):
        settings.npm_registry = registry
    if settings.withheld:
        log.warning(
            "not carried into the guest (the URL holds credentials): %s",
            ", ".join(settings.withheld),
        )
    return settings


PRIMARY_PYTHON_INDEX = ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "index-url")
# pip's own default index, as the host's pip names it (its index and file hosts).
_PIP_DEFAULT = (
    "from pip._internal.models.index import PyPI; print(PyPI.netloc); "
    "print(PyPI.file_storage_domain)"
)


def index_hosts(settings: IndexSettings) -> list[str]:
    """Every host the guest's pip, uv and npm will ask, as allow-list entries.

    The configured index hosts, plus pip's default index where no primary
    Python index is configured, and npm's default registry where none is
    configured: each as the host's own pip and npm name it (the guest's
    clients use the same defaults).
    """
    hosts = settings.hosts()
    if not any(settings.env.get(name) or settings.pip.get(name) for name in PRIMARY_PYTHON_INDEX):
        for python in (Path(sys.executable), host_tools.find(host_tools.PYTHON3)):
            output = _run(python, ["-c", _PIP_DEFAULT])
            if output:
                hosts += [h for h in output.split() if h not in hosts]
                break
    if not settings.npm_registry:
        registry = _run(host_tools.find(host_tools.NPM), ["config", "get", "registry"]).strip()
        host = urlsplit(registry).hostname if "://" in registry else None
        if host and host not in hosts:
            hosts.append(host)
    return hosts


def _run(program: Path | None, args: list[str]) -> str:
    """What an optional host program printed; empty if it is missing or failed."""
    if program is None:
        return ""
    try:
        done = host_tools.run(program, args, capture_output=True, timeout=20)
    except (PyroError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _shareable(name: str, value: str, settings: IndexSettings) -> bool:
    if len(value) > MAX_VALUE_CHARS or "\n" in value or "\0" in value:
        settings.withheld.append(name)
        return False
    for word in value.split():
        if "@" in (urlsplit(word).netloc if "://" in word else ""):
            settings.withheld.append(name)
            return False
    return True


def _pip_config_files(environ: dict[str, str], home: Path) -> list[Path]:
    """pip's configuration files, lowest precedence first (as pip reads them)."""
    xdg = environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    files = [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf")]
    files += [home / ".pip" / "pip.conf", Path(xdg) / "pip" / "pip.conf"]
    if environ.get("PIP_CONFIG_FILE"):
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    return [f for f in files if f.is_file()]


def _npm_registry(npmrc: Path) -> str | None:
    try:
        lines = npmrc.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "registry" and value.strip():
            return value.strip()
    return None
