"""An interactive shell in a workspace: type into it, read what it printed,
then close it and delete the workspace.

    uv run python examples/python_shell.py
"""

from __future__ import annotations

from pyro_mcp import Pyro


def main() -> None:
    pyro = Pyro()
    workspace_id = pyro.create_workspace(environment="debian:12")["workspace_id"]
    try:
        shell_id = pyro.open_shell(workspace_id)["shell_id"]
        pyro.write_shell(
            workspace_id, shell_id, "cd /workspace && printf 'hello from the shell\\n'"
        )
        read = pyro.read_shell(workspace_id, shell_id, plain=True, wait_for_idle_ms=500)
        print(read["output"].strip())
        pyro.close_shell(workspace_id, shell_id)
    finally:
        pyro.delete_workspace(workspace_id)


if __name__ == "__main__":
    main()
