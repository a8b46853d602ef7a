"""One command in a fresh microVM, from Python: the VM is booted, the command
runs, the VM is deleted, all in one call.

    uv run python examples/python_run.py
"""

from __future__ import annotations

import json

from pyro_mcp import Pyro
from pyro_mcp.vm_manager import DEFAULT_MEM_MIB, DEFAULT_TTL_SECONDS, DEFAULT_VCPU_COUNT


def main() -> None:
    pyro = Pyro()
    result = pyro.run_in_vm(
        environment="debian:12",
        command="git --version",
        vcpu_count=DEFAULT_VCPU_COUNT,
        mem_mib=DEFAULT_MEM_MIB,
        timeout_seconds=30,
        ttl_seconds=DEFAULT_TTL_SECONDS,
        network=False,
    )
    shown = {k: result[k] for k in ("exit_code", "stdout", "execution_mode", "cleanup")}
    print(json.dumps(shown, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
