"""Workspaces a chat forgets are reaped; a looping chat cannot start VMs without end."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from pyro_mcp import Pyro
from tests.mcp.conftest import call, call_error, mcp_client

pytestmark = pytest.mark.vm


def test_mcp_workspaces_get_the_servers_default_idle_ttl(mcp_env: dict[str, str]) -> None:
    async def scenario() -> None:
        async with mcp_client(mcp_env, "--no-project-source") as client:
            created = await call(client, "workspace_create")
            assert created["ttl_seconds"] == 86400 and created["expires_at"] is not None
            own = await call(client, "workspace_create", ttl_seconds=120)
            assert own["ttl_seconds"] == 120
            for workspace in (created, own):
                await call(client, "workspace_delete", workspace_id=workspace["workspace_id"])
        async with mcp_client(mcp_env, "--no-project-source", "--default-ttl-seconds", "0") as c:
            never = await call(c, "workspace_create")
            assert never["ttl_seconds"] is None and never["expires_at"] is None
            await call(c, "workspace_delete", workspace_id=never["workspace_id"])

    anyio.run(scenario)
    # The CLI and SDK keep "never" as their default.
    pyro = Pyro(state_dir=mcp_env["PYRO_HOME"], cache_dir=mcp_env["PYRO_CACHE_DIR"])
    workspace = pyro.create_workspace()
    assert workspace["ttl_seconds"] is None
    pyro.delete_workspace(workspace["workspace_id"])


def test_past_the_hosts_cap_create_names_what_runs_instead(
    mcp_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = dict(mcp_env, PYRO_MAX_RUNNING="1")
    monkeypatch.setenv("PYRO_MAX_RUNNING", "1")
    pyro = Pyro(state_dir=mcp_env["PYRO_HOME"], cache_dir=mcp_env["PYRO_CACHE_DIR"])
    first = pyro.create_workspace(name="busy-one")
    with pytest.raises(Exception, match=r"cap of 1 .*busy-one") as failure:
        pyro.create_workspace(name="one-too-many")
    assert "pyro workspace delete" in str(failure.value)
    assert [w["name"] for w in pyro.list_workspaces()["workspaces"]] == [
        "busy-one"
    ]  # nothing half-made

    async def scenario() -> None:
        async with mcp_client(env, "--no-project-source") as client:
            message = await call_error(client, "workspace_create")
            assert "busy-one" in message and "workspace_delete tool" in message

    anyio.run(scenario)
    pyro.stop_workspace(first["workspace_id"])
    second = pyro.create_workspace(name="now-fits")
    assert second["state"] == "running"
    # Starting the stopped one again would pass the cap: refused the same way.
    with pytest.raises(Exception, match="now-fits"):
        pyro.start_workspace(first["workspace_id"])


def test_raw_vm_tools_of_workspace_full(mcp_env: dict[str, str], tmp_path: Path) -> None:
    async def scenario() -> None:
        async with mcp_client(mcp_env, "--profile", "workspace-full", "--no-project-source") as c:
            environments = await call(c, "vm_list_environments")
            assert "debian:12" in [e["name"] for e in environments["environments"]]
            vm = await call(c, "vm_create", network=True)
            info = await call(c, "vm_network_info", vm_id=vm["vm_id"])
            assert info["network"] is True and info["guest_ip"] == "10.0.2.15/24"
            await call(c, "vm_delete", vm_id=vm["vm_id"])
            assert (await call(c, "vm_reap_expired"))["reaped"] == []
            run = await call(c, "vm_run", command="echo hi", ttl_seconds=300)
            assert run["stdout"] == "hi\n" and run["boot_kind"] == "warm"
            message = await call_error(
                c, "vm_run", command="true", timeout_seconds=120, ttl_seconds=60
            )
            assert "ttl_seconds" in message and "timeout_seconds" in message

    anyio.run(scenario)
