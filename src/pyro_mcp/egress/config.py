"""One VM's egress settings on disk (``egress.json``), as its supervisor reads them.

Written by whoever creates or changes the VM (the workspace service, or the VM
service's open default) before each launch; read by the supervisor, which
runs the proxy. It names where the real secret values and the CA key are, so
they stay in their 0600 files and never pass through the spec or a socket.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_mcp.egress import EGRESS_GUEST_ADDRESS, EGRESS_GUEST_PORT, relay
from pyro_mcp.egress.policy import EgressPolicy
from pyro_mcp.egress.tls import CaFiles

EGRESS_FILE = "egress.json"
EGRESS_SOCKET = "egress.sock"
PROXY_URL = f"http://{EGRESS_GUEST_ADDRESS}:{EGRESS_GUEST_PORT}"


@dataclass(frozen=True)
class EgressConfig:
    policy: EgressPolicy
    secrets_dir: Path | None = None
    ca_dir: Path | None = None
    # Where crossings are journalled: the state database and the workspace.
    journal_db: Path | None = None
    workspace_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.to_dict(),
            "secrets_dir": str(self.secrets_dir) if self.secrets_dir else None,
            "ca_dir": str(self.ca_dir) if self.ca_dir else None,
            "journal_db": str(self.journal_db) if self.journal_db else None,
            "workspace_id": self.workspace_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EgressConfig:
        def path(name: str) -> Path | None:
            return Path(data[name]) if data.get(name) else None

        return cls(
            policy=EgressPolicy.from_dict(data.get("policy") or {}),
            secrets_dir=path("secrets_dir"),
            ca_dir=path("ca_dir"),
            journal_db=path("journal_db"),
            workspace_id=data.get("workspace_id"),
        )

    @property
    def ca(self) -> CaFiles | None:
        if self.ca_dir is None:
            return None
        files = CaFiles.in_folder(self.ca_dir)
        return files if files.exists() else None

    def secret_values(self) -> dict[str, bytes]:
        """The real values of the secrets bound to hosts (read from their 0600 files)."""
        values: dict[str, bytes] = {}
        if self.secrets_dir is None:
            return values
        for name in self.policy.secrets:
            try:
                values[name] = (self.secrets_dir / name).read_bytes()
            except OSError:
                continue
        return values


def write(vm_dir: Path, config: EgressConfig) -> None:
    tmp = vm_dir / (EGRESS_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config.to_dict(), handle)
    tmp.replace(vm_dir / EGRESS_FILE)


def read(vm_dir: Path) -> EgressConfig:
    """The VM's settings; open egress (private ranges refused) when it has none."""
    try:
        return EgressConfig.from_dict(json.loads((vm_dir / EGRESS_FILE).read_text()))
    except FileNotFoundError:
        return EgressConfig(policy=EgressPolicy())


def relay_command() -> str:
    """What QEMU runs for each guest connection to the proxy (in the VM directory).

    As a ``guestfwd=...-cmd:`` value: GLib splits it like a shell would, and
    QEMU's option parser needs every comma doubled.
    """
    command = " ".join(
        shlex.quote(part) for part in (sys.executable, "-S", "-I", relay.__file__, EGRESS_SOCKET)
    )
    return command.replace(",", ",,")
