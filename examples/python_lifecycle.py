"""A VM's life step by step: create, start, exec (which deletes the VM after the
command, as pyro-mcp 4.5's exec_vm does), and what is left afterwards.

    uv run python examples/python_lifecycle.py
"""

from __future__ import annotations

import json

from pyro_mcp import NotFound, Pyro


def main() -> None:
    pyro = Pyro()
    created = pyro.create_vm(environment="debian:12", ttl_seconds=600, network=False)
    vm_id = created["vm_id"]
    print(f"created {vm_id}: {created['state']}")
    started = pyro.start_vm(vm_id)
    print(f"started {vm_id}: {started['state']} ({started['boot_kind']} boot)")
    kept = pyro.exec_vm(vm_id, "echo first > /root/note", keep_vm=True)
    print(f"first exec kept the VM: {kept['cleanup']}")
    result = pyro.exec_vm(vm_id, "cat /root/note && uname -r", timeout_seconds=30)
    print(json.dumps({k: result[k] for k in ("exit_code", "stdout", "cleanup")}, indent=2))
    try:
        pyro.status_vm(vm_id)
    except NotFound:
        print(f"{vm_id} is gone: exec_vm deleted it after the command")


if __name__ == "__main__":
    main()
