"""``pyro server`` at the HTTP level: tokens, versions, /mcp, the bridge, TLS, faults."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from mcp import ClientSession
from pyro_mcp import RemoteError
from pyro_mcp.transport import RemoteTransport, wire
from pyro_mcp.version import __version__
from tests.egress.servers import LocalCA
from tests.server.conftest import RemoteServer, pyro_command, start

pytestmark = pytest.mark.vm


def _get(url: str, token: str | None, **headers: str) -> httpx2.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx2.get(url + wire.API + "/hello", headers=headers, trust_env=False)


def test_no_token_a_wrong_one_and_a_revoked_one_get_the_same_bare_401(
    server: RemoteServer,
) -> None:
    server.token("carol")
    revoked = server.tokens["carol"]
    subprocess.run(
        pyro_command("server", "token", "revoke", "carol", "--json"), env=server.env, check=True
    )
    answers = [
        _get(server.url, None),
        _get(server.url, "pyro_" + "x" * 43),
        _get(server.url, revoked),
        httpx2.post(server.url + "/mcp", content=b"{}", trust_env=False),
    ]
    for answer in answers:
        assert answer.status_code == 401
        assert answer.content == b""
        assert answer.headers["www-authenticate"] == "Bearer"
    with pytest.raises(RemoteError, match="refused the token"):
        RemoteTransport(server.url, revoked).hello()


def test_a_client_of_another_version_is_told_both_versions_before_any_work(
    server: RemoteServer,
) -> None:
    answer = _get(server.url, server.tokens["alice"], **{wire.VERSION_HEADER: "0.0.1"})
    assert answer.status_code == 409
    message = answer.json()["error"]["message"]
    assert f"pyro {__version__}" in message and "pyro 0.0.1" in message


def test_tokens_are_stored_only_as_hashes(server: RemoteServer) -> None:
    stored = (server.state_dir / "server.db").read_bytes()
    for token in server.tokens.values():
        assert token.encode() not in stored
    listed = subprocess.run(
        pyro_command("server", "token", "list", "--json"),
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    names = {t["name"] for t in json.loads(listed.stdout)["tokens"]}
    assert {"alice", "bob"} <= names
    assert not any(token in listed.stdout for token in server.tokens.values())


async def _mcp_session(
    url: str, token: str, calls: list[tuple[str, dict[str, Any]]], path: str = "/mcp"
) -> list[Any]:
    results = []
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=300, trust_env=False) as http,
        streamable_http_client(url + path, http_client=http) as streams,
        ClientSession(streams[0], streams[1]) as session,
    ):
        await session.initialize()
        for name, arguments in calls:
            if name == "tools/list":
                results.append(await session.list_tools())
            else:
                results.append(await session.call_tool(name, arguments))
    return results


def test_mcp_over_http_with_a_bearer_token_keeps_principals_apart(server: RemoteServer) -> None:
    created, listed, status, seeded = anyio.run(
        _mcp_session,
        server.url,
        server.tokens["alice"],
        [
            ("workspace_create", {"name": "over-http"}),
            ("workspace_list", {}),
            ("workspace_status", {"workspace_id": "over-http"}),
            ("workspace_create", {"seed_path": "/etc"}),
        ],
    )
    assert not created.is_error, created.content
    ref = created.structured_content["workspace_id"]
    try:
        assert [w["name"] for w in listed.structured_content["workspaces"]] == ["over-http"]
        assert status.structured_content["state"] == "running"
        assert seeded.is_error and "pyro mcp serve --remote" in seeded.content[0].text
        tools, blind = anyio.run(
            _mcp_session,
            server.url,
            server.tokens["bob"],
            [("tools/list", {}), ("workspace_status", {"workspace_id": ref})],
        )
        assert "workspace_exec" in {tool.name for tool in tools.tools}
        assert blind.is_error and f"no workspace {ref!r}" in blind.content[0].text
    finally:
        server.sdk("alice").delete_workspace(ref)


def test_revoking_a_token_ends_its_open_mcp_session(server: RemoteServer) -> None:
    token = server.token("dave")

    async def session() -> str:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30, trust_env=False) as http,
            streamable_http_client(server.url + "/mcp", http_client=http) as streams,
            ClientSession(streams[0], streams[1]) as mcp,
        ):
            await mcp.initialize()
            await mcp.list_tools()
            subprocess.run(
                pyro_command("server", "token", "revoke", "dave"), env=server.env, check=True
            )
            with anyio.fail_after(30):
                try:
                    await mcp.list_tools()
                except Exception as exc:  # the session is gone: any failure will do
                    return type(exc).__name__
            return "still answering"

    assert anyio.run(session) != "still answering"


def test_the_stdio_bridge_seeds_from_the_local_checkout_and_exports_to_it(
    server: RemoteServer, git_project: Path, tmp_path: Path
) -> None:
    env = {
        **server.env,
        "PYRO_HOME": str(tmp_path / "client-state"),
        "PYRO_CACHE_DIR": str(tmp_path / "client-cache"),
        "PYRO_TOKEN": server.tokens["alice"],
    }

    async def bridge() -> list[Any]:
        parameters = StdioServerParameters(
            command=sys.executable,
            args=["-m", "pyro_mcp.cli.main", "mcp", "serve", "--remote", server.url],
            env=env,
            cwd=str(git_project),
        )
        async with (
            stdio_client(parameters) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            created = await session.call_tool("workspace_create", {"name": "bridged"})
            ref = created.structured_content["workspace_id"]
            ran = await session.call_tool(
                "workspace_exec", {"workspace_id": ref, "command": "cat app.py"}
            )
            exported = await session.call_tool(
                "workspace_export",
                {"workspace_id": ref, "path": "app.py", "output_path": "exported.py"},
            )
            deleted = await session.call_tool("workspace_delete", {"workspace_id": ref})
            return [created, ran, exported, deleted]

    created, ran, exported, deleted = anyio.run(bridge)
    assert not created.is_error, created.content
    assert created.structured_content["origin_kind"] == "project_path"
    assert ran.structured_content["stdout"] == "print('hi')\n"
    assert not exported.is_error, exported.content
    assert (git_project / "exported.py").read_text() == "print('hi')\n"
    assert deleted.structured_content["deleted"] is True


def test_a_seed_upload_cut_off_midway_leaves_nothing_on_the_server(server: RemoteServer) -> None:
    parts = urlsplit(server.url)
    uploads = server.state_dir / "server-spool" / "uploads"
    with socket.create_connection((parts.hostname, parts.port)) as raw:
        raw.sendall(
            b"POST " + wire.API.encode() + b"/uploads HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + server.tokens["bob"].encode() + b"\r\n"
            b"Content-Length: 10000000\r\n\r\n" + b"\0" * 1_000_000
        )
        deadline = time.monotonic() + 10
        while not list(uploads.glob("*")) and time.monotonic() < deadline:
            time.sleep(0.05)
    deadline = time.monotonic() + 10
    while list(uploads.glob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(uploads.glob("*")) == []
    with socket.create_connection((parts.hostname, parts.port)) as raw:
        raw.sendall(
            b"POST " + wire.API.encode() + b"/uploads HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + server.tokens["bob"].encode() + b"\r\n"
            b"Content-Length: " + str(wire.MAX_UPLOAD_BYTES + 1).encode() + b"\r\n\r\n"
        )
        answer = b""
        while b"more than" not in answer and (chunk := raw.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"more than a server takes" in answer


def test_tls_with_a_private_ca_and_the_refusals_without_it(
    server: RemoteServer, tmp_path: Path
) -> None:
    ca = LocalCA(tmp_path / "ca")
    log = tmp_path / "tls.log"
    process, url = start(
        server.env, log, "--tls-cert", str(ca.server_pem), "--tls-key", str(ca.server_pem)
    )
    try:
        url = url.replace("127.0.0.1", "localhost")  # the name the certificate carries
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(ca.ca_pem)
        hello = RemoteTransport(url, server.tokens["alice"], ca_file=ca_file).hello()
        assert hello["principal"] == "alice"
        with pytest.raises(RemoteError, match="CERTIFICATE_VERIFY_FAILED"):
            RemoteTransport(url, server.tokens["alice"]).hello()
    finally:
        process.terminate()
        process.wait(timeout=30)
        assert process.stdout is not None
        process.stdout.close()
    refused = subprocess.run(
        pyro_command("server", "serve", "--listen", "0.0.0.0:0"),
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--insecure" in refused.stderr
    insecure_log = tmp_path / "insecure.log"
    process, _ = start(server.env, insecure_log, "--listen", "0.0.0.0:0", "--insecure")
    process.terminate()
    process.wait(timeout=30)
    assert process.stdout is not None
    process.stdout.close()
    assert "WARNING: serving on 0.0.0.0:0 without TLS (--insecure)" in insecure_log.read_text()


def test_a_profile_or_mode_in_the_url_picks_the_tool_set(server: RemoteServer) -> None:
    from tests.mcp.test_server import EXPECTED

    (listed,) = anyio.run(
        _mcp_session, server.url, server.tokens["bob"], [("tools/list", {})], "/mcp/vm-run"
    )
    assert {tool.name for tool in listed.tools} == EXPECTED[("--profile", "vm-run")]
    bogus = httpx2.post(
        server.url + "/mcp/everything",
        headers={"Authorization": f"Bearer {server.tokens['bob']}"},
        content=b"{}",
        trust_env=False,
    )
    assert bogus.status_code == 404 and "repro-fix" in bogus.json()["error"]["message"]


def test_doctor_through_the_server_says_what_principals_share(server: RemoteServer) -> None:
    report = server.sdk("bob").doctor(platform_only=True)
    assert report["server"]["principal"] == "bob"
    assert report["server"]["guest_memory_merge"] == "off"
    assert "warm-principals/bob" in report["server"]["warm_snapshots"]


def test_the_mcp_inspector_reaches_mcp_with_a_bearer_token(
    server: RemoteServer, tmp_path: Path
) -> None:
    from tests.mcp.test_inspector import INSPECTOR

    assert INSPECTOR.exists(), "run `make test` (it runs npm ci in tools/mcp-inspector)"

    def inspect(token: str, *method: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(INSPECTOR),
                "--cli",
                server.url + "/mcp",
                "--transport",
                "http",
                "--header",
                f"Authorization: Bearer {token}",
                "--method",
                *method,
            ],
            env={**server.env, "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )

    listed = inspect(server.tokens["bob"], "tools/list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "workspace_create" in {tool["name"] for tool in json.loads(listed.stdout)["tools"]}
    called = inspect(server.tokens["bob"], "tools/call", "--tool-name", "workspace_list")
    assert called.returncode == 0, called.stderr[-2000:]
    assert json.loads(called.stdout)["structuredContent"]["workspaces"] == []
    refused = inspect("pyro_wrong", "tools/list")
    # A 401 makes the Inspector want OAuth, which it cannot do here: it stops.
    assert refused.returncode != 0 and "auth_required" in refused.stderr


def test_slow_clients_are_dropped_and_leave_nothing(server: RemoteServer, tmp_path: Path) -> None:
    env = {
        **server.env,
        "PYRO_SERVER_UPLOAD_IDLE_SECONDS": "1",
        "PYRO_SERVER_HEADER_SECONDS": "2",
    }
    process, url = start(env, tmp_path / "slow.log")
    try:
        parts = urlsplit(url)
        # Slow loris: a request head trickled a byte at a time is cut off at
        # its deadline, while a prompt client on another connection is served.
        started = time.monotonic()
        with socket.create_connection((parts.hostname, parts.port)) as raw:
            raw.settimeout(30)
            head = b"GET " + wire.API.encode() + b"/hello HTTP/1.1\r\nHost: x\r\nX-Pad: "
            closed = False
            for sent, byte in enumerate(head + b"a" * 1000):
                try:
                    raw.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                readable, _, _ = select.select([raw], [], [], 0.05)
                if readable and raw.recv(1) == b"":
                    closed = True
                    break
                if sent % 10 == 0:
                    assert _get(url, server.tokens["bob"]).status_code == 200
        assert closed and time.monotonic() - started < 15
        uploads = server.state_dir / "server-spool" / "uploads"
        with socket.create_connection((parts.hostname, parts.port)) as raw:
            raw.sendall(
                b"POST " + wire.API.encode() + b"/uploads HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + server.tokens["bob"].encode() + b"\r\n"
                b"Content-Length: 1000\r\n\r\n" + b"\0" * 10
            )
            raw.settimeout(30)
            answer = raw.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408")
        assert list(uploads.glob("*")) == []
    finally:
        process.terminate()
        process.wait(timeout=30)
        assert process.stdout is not None
        process.stdout.close()


def test_an_export_download_cut_off_midway_leaves_nothing_on_the_server(
    server: RemoteServer,
) -> None:
    alice = server.sdk("alice")
    ws = alice.create_workspace()["workspace_id"]
    headers = {
        "Authorization": f"Bearer {server.tokens['alice']}",
        wire.VERSION_HEADER: __version__,
    }
    try:
        alice.exec_workspace(ws, "head -c 30000000 /dev/urandom > big.bin")
        arguments = {"workspace": ws, "path": "big.bin", "output_path": {"download": True}}
        called = httpx2.post(
            server.url + wire.API + "/call/export_workspace",
            json={"arguments": arguments},
            headers=headers,
            timeout=120,
            trust_env=False,
        )
        ticket = json.loads(called.text.strip().splitlines()[-1])["result"]["download"]
        downloads = server.state_dir / "server-spool" / "downloads"
        assert list(downloads.iterdir())
        with httpx2.stream(
            "GET",
            server.url + wire.API + f"/downloads/{ticket}",
            headers=headers,
            trust_env=False,
        ) as response:
            next(response.iter_bytes(65536))  # then the client goes away
        deadline = time.monotonic() + 30
        while list(downloads.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(downloads.iterdir()) == []
    finally:
        alice.delete_workspace(ws)
