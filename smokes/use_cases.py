"""The five use-case recipes (docs/use-cases/), each run as the chat would run it.

Every scenario generates its own Git project, starts `pyro mcp serve --mode
MODE` in it over stdio (the project seeds the workspaces), makes the MCP calls
its recipe lists, checks what each returns, exports one concrete result to the
host, deletes what it created and proves no guest is left running.

    uv run python -m smokes.use_cases                  # all five
    uv run python -m smokes.use_cases repro-fix-loop   # one
    USE_CASE_ENVIRONMENT=debian:12-build uv run python -m smokes.use_cases

USE_CASE_ENVIRONMENT names the environment every scenario's server uses
(default debian:12; `make smoke-use-cases USE_CASE_ENVIRONMENT=...`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import anyio

from smokes.common import (
    Scenario,
    call,
    call_error,
    check,
    git,
    make_repo,
    mcp_session,
    private_home,
    run_all,
)

ENVIRONMENT = os.environ.get("USE_CASE_ENVIRONMENT") or "debian:12"


def serve(mode: str) -> tuple[str, ...]:
    """`pyro mcp serve`'s flags for a scenario: its mode, on the chosen environment."""
    return ("--mode", mode, "--environment", ENVIRONMENT)


# A tiny web app with a health endpoint, a set-up step and its own tests.
WEB_APP = {
    "app/server.py": (
        "import http.server, sys\n\n"
        "class Handler(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = b'ok' if self.path == '/health' else open('build/VERSION', 'rb').read()\n"
        "        self.send_response(200)\n"
        "        self.end_headers()\n"
        "        self.wfile.write(body)\n\n"
        "    def log_message(self, *args):\n"
        "        print('request', self.path, flush=True)\n\n"
        "http.server.HTTPServer(('0.0.0.0', int(sys.argv[1])), Handler).serve_forever()\n"
    ),
    "setup.sh": "set -e\nmkdir -p build\necho 1.0.0 > build/VERSION\necho set up\n",
    "test_app.py": (
        "import unittest, pathlib\n\n"
        "class T(unittest.TestCase):\n"
        "    def test_version(self):\n"
        "        self.assertEqual(pathlib.Path('build/VERSION').read_text().strip(), '1.0.0')\n"
    ),
    ".gitignore": "build/\n__pycache__/\n",
}

# A library with a bug its test catches.
BUGGY = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "test_calc.py": (
        "import unittest, calc\n\n"
        "class T(unittest.TestCase):\n"
        "    def test_add(self):\n"
        "        self.assertEqual(calc.add(2, 3), 5)\n"
    ),
    ".gitignore": "__pycache__/\n",
}
FIX = """--- a/calc.py
+++ b/calc.py
@@ -1,2 +1,2 @@
 def add(a, b):
-    return a - b
+    return a + b
"""


def cold_start_validation(s: Scenario) -> None:
    """Seed, set up, validate, start a service, probe it, export a report."""
    with tempfile.TemporaryDirectory() as tmp, private_home() as env:
        project = make_repo(Path(tmp) / "webapp", WEB_APP)

        async def chat() -> None:
            async with mcp_session(env, project, *serve("cold-start")) as client:
                with s.step("workspace_create"):
                    ws = (await call(client, "workspace_create", name="webapp"))["workspace_id"]
                try:
                    with s.step("set up"):
                        done = await call(
                            client, "workspace_exec", workspace_id=ws, command="sh setup.sh"
                        )
                        check(done["exit_code"] == 0, f"setup failed: {done['_text']}")
                    with s.step("validate"):
                        tests = await call(
                            client,
                            "workspace_exec",
                            workspace_id=ws,
                            command="python3 -m unittest -v",
                        )
                        check(tests["exit_code"] == 0 and "OK" in tests["stderr"], tests["_text"])
                    with s.step("service_start"):
                        service = await call(
                            client,
                            "service_start",
                            workspace_id=ws,
                            service_name="web",
                            command="python3 app/server.py 8080",
                            ready_http="http://127.0.0.1:8080/health",
                        )
                        check(service["state"] == "running", f"service not ready: {service}")
                    with s.step("probe"):
                        probe = await call(
                            client,
                            "workspace_exec",
                            workspace_id=ws,
                            command='python3 -c "import urllib.request as u; '
                            "print(u.urlopen('http://127.0.0.1:8080/version').read().decode())\"",
                        )
                        check(probe["stdout"].strip() == "1.0.0", f"probe: {probe['_text']}")
                        logs = await call(
                            client, "service_logs", workspace_id=ws, service_name="web"
                        )
                        check(
                            "request /version" in logs["stdout"], f"service log: {logs['stdout']!r}"
                        )
                    with s.step("report"):
                        await call(
                            client,
                            "workspace_exec",
                            workspace_id=ws,
                            command="{ echo 'setup: ok'; echo 'tests: ok'; "
                            'echo "version: $(cat build/VERSION)"; } > report.txt',
                        )
                        target = project / "pyro-report.txt"
                        await call(
                            client,
                            "workspace_export",
                            workspace_id=ws,
                            path="report.txt",
                            output_path=str(target),
                        )
                        check("version: 1.0.0" in target.read_text(), "report content")
                        s.result = (
                            f"exported {target.name}: {target.read_text().count(chr(10))} lines"
                        )
                    with s.step("service_stop"):
                        await call(client, "service_stop", workspace_id=ws, service_name="web")
                finally:
                    await call(client, "workspace_delete", workspace_id=ws)

        anyio.run(chat)


def repro_fix_loop(s: Scenario) -> None:
    """Reproduce, patch, rerun, diff, export the patch, reset."""
    with tempfile.TemporaryDirectory() as tmp, private_home() as env:
        project = make_repo(Path(tmp) / "calc", BUGGY)

        async def chat() -> None:
            async with mcp_session(env, project, *serve("repro-fix")) as client:
                ws = (await call(client, "workspace_create"))["workspace_id"]
                try:
                    with s.step("reproduce"):
                        run = await call(
                            client, "workspace_exec", workspace_id=ws, command="python3 -m unittest"
                        )
                        check(
                            run["exit_code"] == 1 and "AssertionError" in run["stderr"],
                            run["_text"],
                        )
                    with s.step("patch"):
                        await call(client, "workspace_patch_apply", workspace_id=ws, patch=FIX)
                    with s.step("rerun"):
                        run = await call(
                            client, "workspace_exec", workspace_id=ws, command="python3 -m unittest"
                        )
                        check(run["exit_code"] == 0, run["_text"])
                    with s.step("diff"):
                        diff = await call(client, "workspace_diff", workspace_id=ws, format="patch")
                        paths = [c["path"] for c in diff["changes"]]
                        check(paths == ["calc.py"], f"the review shows {paths}, not just calc.py")
                        check(diff["ignored_count"] == 1, "__pycache__ should be left out")
                    with s.step("export"):
                        target = project / "fix.patch"
                        target.write_text(diff["patch"])
                        git(project, "apply", "--check", str(target))
                        await call(
                            client,
                            "workspace_export",
                            workspace_id=ws,
                            path="calc.py",
                            output_path=str(project / "calc.fixed.py"),
                        )
                        check("a + b" in (project / "calc.fixed.py").read_text(), "exported file")
                        s.result = "fix.patch passes git apply --check"
                    with s.step("reset"):
                        await call(client, "workspace_reset", workspace_id=ws)
                        run = await call(
                            client, "workspace_exec", workspace_id=ws, command="python3 -m unittest"
                        )
                        check(run["exit_code"] == 1, "after reset the bug is back")
                finally:
                    await call(client, "workspace_delete", workspace_id=ws)

        anyio.run(chat)


def parallel_workspaces(s: Scenario) -> None:
    """Two named, labelled workspaces side by side; nothing crosses between them."""
    with tempfile.TemporaryDirectory() as tmp, private_home() as env:
        project = make_repo(Path(tmp) / "calc", BUGGY)

        async def chat() -> None:
            async with mcp_session(env, project, *serve("repro-fix")) as client:
                created: list[str] = []
                try:
                    with s.step("create two"):
                        for name, idea in (("try-plus", "plus"), ("try-sum", "sum")):
                            ws = await call(
                                client, "workspace_create", name=name, labels={"idea": idea}
                            )
                            created.append(ws["workspace_id"])
                    with s.step("list"):
                        listing = await call(client, "workspace_list")
                        names = sorted(w["name"] for w in listing["workspaces"])
                        check(names == ["try-plus", "try-sum"], f"listed {names}")
                    with s.step("diverge"):
                        await call(
                            client, "workspace_patch_apply", workspace_id="try-plus", patch=FIX
                        )
                        await call(
                            client,
                            "workspace_file_write",
                            workspace_id="try-sum",
                            path="calc.py",
                            text="def add(a, b):\n    return sum((a, b))\n",
                        )
                        await call(
                            client,
                            "workspace_exec",
                            workspace_id="try-sum",
                            command="touch only-here",
                        )
                    with s.step("isolation"):
                        seen = await call(
                            client,
                            "workspace_exec",
                            workspace_id="try-plus",
                            command="test -e only-here && echo leaked || echo isolated; "
                            "cat calc.py",
                        )
                        check(
                            seen["stdout"].startswith("isolated") and "a + b" in seen["stdout"],
                            seen["_text"],
                        )
                        for ref in ("try-plus", "try-sum"):
                            run = await call(
                                client,
                                "workspace_exec",
                                workspace_id=ref,
                                command="python3 -m unittest",
                            )
                            check(run["exit_code"] == 0, f"{ref}: {run['_text']}")
                    with s.step("update"):
                        updated = await call(
                            client,
                            "workspace_update",
                            workspace_id="try-sum",
                            name="chosen",
                            labels={"verdict": "keep"},
                        )
                        check(
                            updated["name"] == "chosen" and updated["labels"]["verdict"] == "keep",
                            str(updated),
                        )
                    with s.step("export"):
                        target = project / "chosen-calc.py"
                        await call(
                            client,
                            "workspace_export",
                            workspace_id="chosen",
                            path="calc.py",
                            output_path=str(target),
                        )
                        check("sum((a, b))" in target.read_text(), "exported the chosen fix")
                        s.result = "2 workspaces isolated; exported chosen-calc.py"
                finally:
                    for created_id in created:
                        await call(client, "workspace_delete", workspace_id=created_id)

        anyio.run(chat)


SUSPICIOUS = {
    "install.py": (
        "import os, socket\n"
        "print('home has', len(os.listdir('/root')), 'entries')\n"
        "try:\n"
        "    socket.create_connection(('198.51.100.7', 443), timeout=3)\n"
        "    print('NETWORK: reached the internet')\n"
        "except OSError as exc:\n"
        "    print('NETWORK: blocked', type(exc).__name__)\n"
        "open('/tmp/dropped', 'w').write('payload')\n"
    ),
    "README": "run install.py to set things up\n",
}


def untrusted_inspection(s: Scenario) -> None:
    """Offline by default; read, run the suspicious script, export only the report."""
    with tempfile.TemporaryDirectory() as tmp, private_home() as env:
        project = make_repo(Path(tmp) / "suspicious", SUSPICIOUS)

        async def chat() -> None:
            async with mcp_session(env, project, *serve("inspect")) as client:
                ws = (await call(client, "workspace_create"))["workspace_id"]
                try:
                    with s.step("look"):
                        listing = await call(client, "workspace_file_list", workspace_id=ws)
                        check(
                            {e["path"] for e in listing["entries"]}
                            == {"/workspace/install.py", "/workspace/README"},
                            str(listing),
                        )
                        source = await call(
                            client, "workspace_file_read", workspace_id=ws, path="install.py"
                        )
                        check("socket" in source["content"], "read the script")
                        await call_error(
                            client, "workspace_file_write", workspace_id=ws, path="x", text="y"
                        )
                    with s.step("run it offline"):
                        run = await call(
                            client,
                            "workspace_exec",
                            workspace_id=ws,
                            command="python3 install.py > inspection-report.txt 2>&1; "
                            "ls /tmp/dropped >> inspection-report.txt",
                        )
                        check(run["exit_code"] == 0, run["_text"])
                    with s.step("export the report only"):
                        target = project / "inspection-report.txt"
                        await call(
                            client,
                            "workspace_export",
                            workspace_id=ws,
                            path="inspection-report.txt",
                            output_path=str(target),
                        )
                        report = target.read_text()
                        check(
                            "NETWORK: blocked" in report, f"the guest reached the network: {report}"
                        )
                        check(
                            not Path("/tmp/dropped").exists()
                            or "payload" not in Path("/tmp/dropped").read_text(),
                            "host /tmp touched",
                        )
                        status = git(project, "status", "--porcelain")
                        check(
                            status.strip() == "?? inspection-report.txt",
                            f"host checkout changed: {status}",
                        )
                        s.result = "network blocked; only inspection-report.txt left the guest"
                finally:
                    await call(client, "workspace_delete", workspace_id=ws)

        anyio.run(chat)


def review_eval(s: Scenario) -> None:
    """A checkpoint before the review, a PTY checklist, an evaluation, reset to the
    checkpoint, export the verdict, and the workspace summary at the end."""
    with tempfile.TemporaryDirectory() as tmp, private_home() as env:
        project = make_repo(
            Path(tmp) / "calc", {**BUGGY, "calc.py": "def add(a, b):\n    return a + b\n"}
        )

        async def chat() -> None:
            async with mcp_session(env, project, *serve("review-eval")) as client:
                ws = (await call(client, "workspace_create"))["workspace_id"]
                try:
                    with s.step("checkpoint before the review"):
                        made = await call(
                            client, "snapshot_create", workspace_id=ws, snapshot_name="reviewed"
                        )
                        check(made["snapshot"]["snapshot_name"] == "reviewed", made["_text"])
                    with s.step("PTY checklist"):
                        shell = await call(client, "shell_open", workspace_id=ws)
                        sid = shell["shell_id"]
                        await call(
                            client,
                            "shell_write",
                            workspace_id=ws,
                            shell_id=sid,
                            input="python3 -m unittest 2>&1 | tail -1; echo CHECKED",
                        )
                        output, cursor = "", shell["cursor"]
                        deadline = anyio.current_time() + 60
                        while anyio.current_time() < deadline:
                            read = await call(
                                client,
                                "shell_read",
                                workspace_id=ws,
                                shell_id=sid,
                                cursor=cursor,
                                plain=True,
                                wait_for_idle_ms=1500,
                            )
                            output, cursor = output + read["output"], read["next_cursor"]
                            if "CHECKED" in output.replace("\r", "").splitlines():
                                break
                        check("OK" in output, f"the checklist run shows: {output[-300:]!r}")
                        await call(client, "shell_close", workspace_id=ws, shell_id=sid)
                    with s.step("evaluate"):
                        await call(
                            client,
                            "workspace_exec",
                            workspace_id=ws,
                            command='python3 -c "import calc, json; '
                            "json.dump({'add_2_3': calc.add(2, 3)}, open('eval.json', 'w'))\"; "
                            "echo broken > calc.py",
                        )
                        diff = await call(client, "workspace_diff", workspace_id=ws)
                        check(
                            sorted(c["path"] for c in diff["changes"]) == ["calc.py", "eval.json"],
                            str(diff["changes"]),
                        )
                    with s.step("reset to the checkpoint"):
                        await call(client, "workspace_reset", workspace_id=ws, snapshot="reviewed")
                        after = await call(client, "workspace_diff", workspace_id=ws)
                        check(not after["changed"], f"after reset: {after['changes']}")
                    with s.step("export the verdict"):
                        await call(
                            client,
                            "workspace_exec",
                            workspace_id=ws,
                            command="python3 -m unittest 2>&1 | tail -1 > verdict.txt",
                        )
                        target = project / "verdict.txt"
                        await call(
                            client,
                            "workspace_export",
                            workspace_id=ws,
                            path="verdict.txt",
                            output_path=str(target),
                        )
                        check(target.read_text().strip() == "OK", target.read_text())
                    with s.step("workspace_summary"):
                        summary = await call(client, "workspace_summary", workspace_id=ws)
                        exports = summary["artifacts"]["exports"]
                        check([e["path"] for e in exports] == ["verdict.txt"], str(exports))
                        check(summary["snapshots"]["named_count"] == 1, str(summary["snapshots"]))
                        s.result = (
                            "verdict.txt: OK after reset to snapshot 'reviewed' (taken before the "
                            "review); the summary lists the export and the checkpoint"
                        )
                finally:
                    await call(client, "workspace_delete", workspace_id=ws)

        anyio.run(chat)


SCENARIOS = {
    "cold-start-validation": cold_start_validation,
    "repro-fix-loop": repro_fix_loop,
    "parallel-workspaces": parallel_workspaces,
    "untrusted-inspection": untrusted_inspection,
    "review-eval": review_eval,
}

if __name__ == "__main__":
    sys.exit(run_all(SCENARIOS, sys.argv[1:]))
