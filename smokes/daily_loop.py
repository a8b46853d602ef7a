"""The daily loop on the warm path: prepare -> connect a host -> create -> reset -> delete.

`pyro prepare` takes (or confirms) the warm snapshot; `pyro host connect
claude-code` registers pyro with the real Claude Code CLI (pinned in
tools/host-clis) under a throwaway HOME; the smoke then starts exactly the
command Claude Code recorded, in the project, and makes the chat's calls.
Create and reset must restore the snapshot (`boot_kind` warm).

    uv run python -m smokes.daily_loop
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

from mcp import Client, StdioServerParameters
from smokes.common import (
    REPO,
    Scenario,
    SmokeFailure,
    call,
    check,
    make_repo,
    private_home,
    run_all,
)

HOST_BIN = REPO / "tools" / "host-clis" / "node_modules" / ".bin"
PYRO = Path(sys.executable).parent / "pyro"


def daily_loop(s: Scenario) -> None:
    if not (HOST_BIN / "claude").exists():
        raise SmokeFailure("tools/host-clis is not installed: run `make host-clis`")
    with tempfile.TemporaryDirectory() as tmp, private_home() as env:
        project = make_repo(Path(tmp) / "project", {"app.py": "print('hello')\n"})
        with s.step("pyro prepare"):
            prepared = _pyro(env, project, "prepare", "--json")
            snapshots = prepared.get("snapshots")
            check(isinstance(snapshots, list) and bool(snapshots), f"prepare: {prepared}")
        home = Path(tmp) / "home"
        (home / "tmp").mkdir(parents=True)
        host_env = {**env, "HOME": str(home), "TMPDIR": str(home / "tmp")}
        host_env["PATH"] = f"{HOST_BIN}:/usr/bin:/bin"
        host_env["DISABLE_AUTOUPDATER"] = "1"
        with s.step("pyro host connect claude-code"):
            _pyro(host_env, project, "host", "connect", "claude-code", "--json")
            entry = json.loads((home / ".claude.json").read_text())["mcpServers"]["pyro"]
            check(Path(entry["command"]).is_absolute(), f"registered command: {entry}")

        async def chat() -> None:
            params = StdioServerParameters(
                command=entry["command"], args=entry["args"], env=host_env, cwd=str(project)
            )
            async with Client(params, read_timeout_seconds=600) as client:
                with s.step("workspace_create"):
                    ws = await call(client, "workspace_create")
                check(ws["boot_kind"] == "warm", f"create booted {ws['boot_kind']}: {ws}")
                try:
                    with s.step("workspace_exec"):
                        run = await call(
                            client,
                            "workspace_exec",
                            workspace_id=ws["workspace_id"],
                            command="python3 app.py",
                        )
                        check(run["stdout"] == "hello\n", run["_text"])
                    with s.step("workspace_reset"):
                        reset = await call(
                            client, "workspace_reset", workspace_id=ws["workspace_id"]
                        )
                    check(reset["boot_kind"] == "warm", f"reset booted {reset['boot_kind']}")
                    s.result = (
                        f"create {ws['boot_ms']} ms warm, reset {reset['boot_ms']} ms warm "
                        f"(through the command Claude Code registered)"
                    )
                finally:
                    await call(client, "workspace_delete", workspace_id=ws["workspace_id"])

        anyio.run(chat)


def _pyro(env: dict[str, str], cwd: Path, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [str(PYRO), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise SmokeFailure(f"pyro {' '.join(args)}: {done.stderr.strip()[-600:]}")
    data = json.loads(done.stdout)
    return data if isinstance(data, dict) else {"result": data}


if __name__ == "__main__":
    sys.exit(run_all({"daily-loop": daily_loop}, sys.argv[1:]))
