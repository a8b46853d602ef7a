"""Egress rules and host-bound secrets through the MCP tools of workspace-full."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.egress.servers import LocalCA, serve
from tests.mcp.conftest import call, call_error, mcp_client

PROBE = Path(__file__).parent.parent / "egress" / "guest_probe.py"
REAL = "mcp-real-token-8d1e55"


def test_a_chat_binds_a_secret_to_a_host_and_widens_the_list(
    mcp_env: dict[str, str], tmp_path: Path
) -> None:
    ca = LocalCA(tmp_path / "ca")  # the server's environment, not this process's
    env = {**mcp_env, "SSL_CERT_FILE": str(ca.bundle)}

    async def scenario(port: int, other: int, seen: list[dict[str, object]]) -> None:
        target = f"host.pyro.internal:{port}"
        flags = ("--profile", "workspace-full", "--no-project-source")
        async with mcp_client(env, *flags) as client:
            # Without the operator's switch, host services are refused at create.
            message = await call_error(
                client, "workspace_create", network_policy="egress", allow_hosts=[target]
            )
            assert "--allow-host-services" in message
            tools = {t.name: t for t in (await client.list_tools()).tools}
            arguments = set(tools["workspace_create"].input_schema["properties"])
            assert {"allow_hosts", "deny_hosts", "secrets"} <= arguments
            assert not arguments & {"allow_private_egress", "allow_host_services"}

        async with mcp_client(env, *flags, "--allow-host-services") as client:
            created = await call(
                client,
                "workspace_create",
                network_policy="egress",
                allow_hosts=[target],
                secrets={"TOKEN": {"value": REAL, "hosts": [target]}},
            )
            ws = created["workspace_id"]
            assert created["egress"]["allow_host_services"] is True
            assert REAL not in json.dumps(created)
            await call(
                client,
                "workspace_file_write",
                workspace_id=ws,
                path=".probe.py",
                text=PROBE.read_text(),
            )

            async def probe(*args: str) -> dict[str, object]:
                result = await call(
                    client,
                    "workspace_exec",
                    workspace_id=ws,
                    command="python3 .probe.py " + " ".join(args),
                )
                answer: dict[str, object] = json.loads(result["stdout"].splitlines()[-1])
                return answer

            ok = await probe("get", f"https://{target}/", "Authorization=@/run/pyro-secrets/TOKEN")
            assert ok["status"] == 200 and seen[-1]["headers"]["authorization"] == REAL  # type: ignore[index]
            other_url = f"http://host.pyro.internal:{other}/"
            assert (await probe("get", other_url))["status"] == 403
            await call(
                client,
                "workspace_update",
                workspace_id=ws,
                allow_hosts=[f"host.pyro.internal:{other}"],
            )
            assert (await probe("get", other_url))["status"] == 200
            logs = await call(client, "workspace_logs", workspace_id=ws)
            kinds = [e["kind"] for e in logs["entries"]]
            assert "egress" in kinds and "egress_policy" in kinds
            await call(client, "workspace_delete", workspace_id=ws)

    with serve(ca) as (port, recorder), serve(None) as (other, _):
        anyio.run(scenario, port, other, recorder.requests)


@pytest.mark.parametrize("profile", ["workspace-core"])
def test_host_rules_are_workspace_full_only(mcp_env: dict[str, str], profile: str) -> None:
    async def scenario() -> None:
        async with mcp_client(mcp_env, "--profile", profile, "--no-project-source") as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            for tool in ("workspace_create", "workspace_update"):
                assert "allow_hosts" not in tools[tool].input_schema["properties"]

    anyio.run(scenario)
