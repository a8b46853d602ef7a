"""What a model may make pyro do on the host, checked through a real MCP client."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import anyio
import pytest

from pyro_mcp import NotFound, Pyro
from tests.mcp.conftest import call, call_error, mcp_client

pytestmark = pytest.mark.vm


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory the server is not given, with a secret in it."""
    root = tmp_path / "outside"
    (root / "dot-ssh").mkdir(parents=True)
    (root / "dot-ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    return root


def test_host_paths_from_mcp_stay_under_the_project_and_allowed_dirs(
    mcp_env: dict[str, str], project: Path, outside: Path
) -> None:
    (project / "keys").symlink_to(outside / "dot-ssh")
    (project / "escape-dir").symlink_to(outside)

    async def confined() -> None:
        async with mcp_client(mcp_env, cwd=project) as client:
            message = await call_error(client, "workspace_create", seed_path=str(outside))
            assert "--allow-host-path" in message
            message = await call_error(client, "workspace_create", seed_path=str(project / "keys"))
            assert "outside the host paths" in message and "dot-ssh" in message
            ws = (await call(client, "workspace_create"))["workspace_id"]
            listing = await call(client, "workspace_file_list", workspace_id=ws)
            paths = {e["path"] for e in listing["entries"]}
            assert "/workspace/keys" not in paths  # untracked anyway
            for target in ("/etc/pyro-evil", str(project / "escape-dir" / "new.txt")):
                message = await call_error(
                    client,
                    "workspace_export",
                    workspace_id=ws,
                    path="src/app.py",
                    output_path=target,
                )
                assert "--allow-host-path" in message
            message = await call_error(
                client, "workspace_sync_push", workspace_id=ws, source_path=str(outside)
            )
            assert "--allow-host-path" in message
            exported = await call(
                client,
                "workspace_export",
                workspace_id=ws,
                path="src/app.py",
                output_path="exported.py",
            )
            assert Path(exported["output"]) == project / "exported.py"
            message = await call_error(
                client,
                "workspace_export",
                workspace_id=ws,
                path="src/app.py",
                output_path="exported.py",
            )
            assert "never overwrite" in message
            message = await call_error(
                client, "workspace_export", workspace_id=ws, path="src/app.py", output_path="keys"
            )
            assert "symlink" in message
            summary = await call(client, "workspace_summary", workspace_id=ws)
            assert [c["kind"] for c in summary["host_crossings"]] == ["seed", "export"]
            await call(client, "workspace_delete", workspace_id=ws)

    async def allowed() -> None:
        async with mcp_client(mcp_env, "--allow-host-path", str(outside), cwd=project) as client:
            ws = (await call(client, "workspace_create", seed_path=str(outside)))["workspace_id"]
            read = await call(
                client, "workspace_file_read", workspace_id=ws, path="dot-ssh/id_ed25519"
            )
            assert read["content"] == "PRIVATE KEY\n"
            await call(
                client,
                "workspace_export",
                workspace_id=ws,
                path="dot-ssh",
                output_path=str(outside / "copy"),
            )
            assert (outside / "copy" / "id_ed25519").exists()
            await call(client, "workspace_delete", workspace_id=ws)

    async def nothing() -> None:
        async with mcp_client(mcp_env, "--no-project-source", cwd=project) as client:
            message = await call_error(client, "workspace_create", seed_path=str(project))
            assert "no host paths" in message

    anyio.run(confined)
    anyio.run(allowed)
    anyio.run(nothing)
    assert (outside / "dot-ssh" / "id_ed25519").read_text() == "PRIVATE KEY\n"
    assert not Path("/etc/pyro-evil").exists()


def test_no_tool_falls_back_to_running_on_the_host(mcp_env: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / f"ran-on-host-{uuid.uuid4().hex}"
    env = dict(mcp_env, PYRO_QEMU="/nonexistent/qemu-system-x86_64")

    async def scenario() -> None:
        async with mcp_client(env, "--profile", "workspace-full", "--no-project-source") as client:
            message = await call_error(client, "vm_run", command=f"touch {marker}")
            assert "qemu-system-x86" in message and "pyro doctor" in message
            message = await call_error(client, "workspace_create")
            assert "pyro doctor" in message
            tools = (await client.list_tools()).tools
            for tool in tools:
                properties = set(tool.input_schema.get("properties", {}))
                assert not {"host", "on_host", "local", "sandbox"} & properties, tool.name

    anyio.run(scenario)
    assert not marker.exists()


def test_tls_from_a_workspace_with_egress_trusts_the_hosts_authorities(pyro: Pyro) -> None:
    from pip._internal.models.index import PyPI  # the index the host's pip reaches by default

    index = os.environ.get("PIP_INDEX_URL") or PyPI.simple_url
    fetch = (
        "python3 -c 'import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=30).status)' "
        + index.rstrip("/")
        + "/pip/"
    )
    online = pyro.create_workspace(network=True)["workspace_id"]
    result = pyro.exec_workspace(online, fetch, timeout_seconds=60)
    assert (result["exit_code"], result["stdout"]) == (0, "200\n"), result["stderr"]
    env = pyro.exec_workspace(online, "echo $SSL_CERT_FILE $PIP_CERT")["stdout"].split()
    assert env == ["/etc/ssl/certs/ca-certificates.crt"] * 2
    pyro.reset_workspace(online)
    assert pyro.exec_workspace(online, fetch, timeout_seconds=60)["stdout"] == "200\n"
    pyro.delete_workspace(online)

    untrusted = pyro.create_workspace(network=True, host_ca=False)["workspace_id"]
    result = pyro.exec_workspace(untrusted, fetch, timeout_seconds=60)
    assert result["exit_code"] != 0 and "CERTIFICATE_VERIFY_FAILED" in result["stderr"]
    pyro.delete_workspace(untrusted)

    offline = pyro.create_workspace()["workspace_id"]
    result = pyro.exec_workspace(offline, fetch, timeout_seconds=60)
    assert result["exit_code"] != 0 and not result["timed_out"]
    assert "URLError" in result["stderr"]
    pyro.delete_workspace(offline)


def test_idle_ttl_moves_with_activity_and_reaping_leaves_a_tombstone(
    pyro: Pyro, mcp_env: dict[str, str]
) -> None:
    created = pyro.create_workspace(name="idle", ttl_seconds=3600)
    ws = created["workspace_id"]
    first = created["expires_at"]
    assert 3590 < first - created["last_activity_at"] <= 3600
    pyro.exec_workspace(ws, "true")
    status = pyro.status_workspace(ws)
    assert status["expires_at"] > first and status["idle_seconds"] < 5
    assert "warning" not in status

    # A command in flight is never cut off, however expired the workspace is.
    store = pyro._workspaces.store
    running = threading.Thread(target=pyro.exec_workspace, args=(ws, "sleep 6"))
    running.start()
    deadline = time.monotonic() + 30
    while not pyro._vms.busy(status["vm_id"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    store.update_workspace(ws, expires_at=time.time() - 1)
    assert pyro._workspaces.reap_expired() == []
    running.join()
    store.update_workspace(ws, expires_at=time.time() - 1)
    assert pyro._workspaces.reap_expired() == [ws]
    with pytest.raises(NotFound, match=r"no longer exists: reaped after 3600 s without activity"):
        pyro.status_workspace("idle")

    async def through_mcp() -> None:
        async with mcp_client(mcp_env, "--no-project-source") as client:
            message = await call_error(client, "workspace_exec", workspace_id=ws, command="true")
            assert "reaped after 3600 s" in message

    anyio.run(through_mcp)


def test_results_near_the_lifetime_cap_carry_a_warning(pyro: Pyro) -> None:
    ws = pyro.create_workspace(max_lifetime_seconds=100)["workspace_id"]
    assert "warning" not in pyro.exec_workspace(ws, "true")
    pyro._workspaces.store.update_workspace(ws, created_at=time.time() - 95)
    result = pyro.exec_workspace(ws, "true")
    assert "max_lifetime_seconds" in result["warning"] and "export" in result["warning"]
    assert "warning" in pyro.status_workspace(ws)
    pyro.delete_workspace(ws)


def test_state_and_cache_directories_are_private(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        pyro = Pyro(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    finally:
        os.umask(previous)
    for path in (pyro.paths.state_dir, pyro.paths.cache_dir):
        assert path.stat().st_mode & 0o777 == 0o700, path


ID_ARGUMENTS = ("workspace_id", "vm_id", "shell_id", "service_name", "snapshot_name", "name")
BAD_IDS = ("a\0b", "a/b", "..", "../../etc", "x" * 5000)
FILLERS = {"string": "x", "integer": 1, "number": 1, "boolean": False, "array": [], "object": {}}


def test_every_id_argument_refuses_nul_separators_dotdot_and_huge_values(
    mcp_env: dict[str, str], tmp_path: Path
) -> None:
    """Each tool's ids and names are checked against their form before any use."""

    async def probe() -> list[str]:
        problems = []
        async with mcp_client(
            mcp_env, "--profile", "workspace-full", "--no-project-source", cwd=tmp_path
        ) as client:
            ws = (await call(client, "workspace_create"))["workspace_id"]
            for tool in (await client.list_tools()).tools:
                schema = tool.input_schema or {}
                properties = schema.get("properties", {})
                required = schema.get("required", [])
                base = {}
                for argument in required:
                    kinds = [properties[argument].get("type")] + [
                        option.get("type") for option in properties[argument].get("anyOf", [])
                    ]
                    base[argument] = next(FILLERS[k] for k in kinds if k in FILLERS)
                if "workspace_id" in properties:
                    base["workspace_id"] = ws
                for argument in [a for a in ID_ARGUMENTS if a in properties]:
                    for bad in BAD_IDS:
                        result = await client.call_tool(tool.name, {**base, argument: bad})
                        text = " ".join(b.text for b in result.content if b.type == "text")
                        if not result.is_error or not any(
                            kind in text for kind in ("NotFound", "InvalidArgument")
                        ):
                            problems.append(f"{tool.name}({argument}={bad[:12]!r}): {text[:200]}")
                        elif len(text) > 2000:
                            problems.append(f"{tool.name}({argument}): echoes the whole value")
            labelled = await client.call_tool(
                "workspace_update", {"workspace_id": ws, "labels": {"a\0b": "v"}}
            )
            assert labelled.is_error and "InvalidArgument" in labelled.content[0].text
            await call(client, "workspace_delete", workspace_id=ws)
        return problems

    problems = anyio.run(probe)
    assert problems == [], "\n".join(problems)
