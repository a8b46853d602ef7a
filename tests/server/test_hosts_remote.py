"""Chat hosts on a laptop connected to a ``pyro server``: the real Claude Code,
Codex and OpenCode CLIs (tools/host-clis) with a registered bridge."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from pyro_mcp.hosts.configs import Entry
from pyro_mcp.hosts.service import health_check
from tests.hosts.test_real_hosts import HOST_BIN, host, pyro
from tests.server.conftest import RemoteServer

pytestmark = pytest.mark.vm

VAR = "MY_PYRO_TOKEN"


@pytest.fixture
def laptop(tmp_path: Path, server: RemoteServer) -> dict[str, str]:
    """A throwaway HOME with the hosts' CLIs, the token in $MY_PYRO_TOKEN, no pyro state."""
    for name in ("claude", "codex", "opencode"):
        assert (HOST_BIN / name).exists(), "run `make test` (it installs tools/host-clis)"
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    return {
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "PATH": f"{HOST_BIN}:/usr/bin:/bin",
        "PYRO_HOME": str(home / "pyro-state"),
        "PYRO_CACHE_DIR": str(home / "pyro-cache"),
        VAR: server.tokens["alice"],
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
    }


def _connect(env: dict[str, str], cwd: Path, name: str, server: RemoteServer) -> dict:
    flags = ["--remote", server.url, "--token-env", VAR, "--no-project-source", "--json"]
    connected = pyro(env, cwd, "host", "connect", name, *flags)
    assert connected.returncode == 0, connected.stdout + connected.stderr
    result = json.loads(connected.stdout)
    assert result["args"][-4:] == ["--remote", server.url, "--token-env", VAR]
    assert result["health"]["ok"], result["health"]
    return dict(result)


def test_claude_code_and_opencode_connect_through_the_bridge_with_the_token_by_name(
    laptop: dict[str, str], server: RemoteServer, tmp_path: Path
) -> None:
    token = server.tokens["alice"]
    _connect(laptop, tmp_path, "claude-code", server)
    assert token not in (Path(laptop["HOME"]) / ".claude.json").read_text()
    assert "✔ Connected" in host(laptop, tmp_path, "claude", "mcp", "list")
    # A wrong token fails the start, and the host says so.
    wrong = {**laptop, VAR: "pyro_wrong"}
    assert "Failed to connect" in host(wrong, tmp_path, "claude", "mcp", "list")

    _connect(laptop, tmp_path, "opencode", server)
    config = Path(laptop["HOME"]) / ".config" / "opencode" / "opencode.json"
    assert token not in config.read_text()
    assert "connected" in host(laptop, tmp_path, "opencode", "mcp", "list")


def test_codex_forwards_the_token_variable_by_name_only(
    laptop: dict[str, str], server: RemoteServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _connect(laptop, tmp_path, "codex", server)
    config = Path(laptop["HOME"]) / ".codex" / "config.toml"
    assert server.tokens["alice"] not in config.read_text()
    table = tomllib.loads(config.read_text())["mcp_servers"]["pyro"]
    assert table["env_vars"] == [VAR]
    got = json.loads(host(laptop, tmp_path, "codex", "mcp", "get", "pyro", "--json"))
    monkeypatch.setenv(VAR, server.tokens["alice"])  # as Codex forwards it
    transport = got["transport"]
    health = health_check(
        Entry(transport["command"], transport["args"]), Path(laptop["HOME"]) / ".codex"
    )
    assert health["ok"] and health["tools"] > 5, health


def test_each_host_registers_the_servers_own_http_endpoint_with_the_token_by_name(
    laptop: dict[str, str], server: RemoteServer, tmp_path: Path
) -> None:
    token = server.tokens["alice"]
    for name in ("claude-code", "codex", "opencode"):
        flags = ["--remote", server.url, "--token-env", VAR, "--transport", "http", "--json"]
        connected = pyro(laptop, tmp_path, "host", "connect", name, *flags)
        assert connected.returncode == 0, connected.stdout + connected.stderr
        result = json.loads(connected.stdout)
        assert result["url"] == server.url + "/mcp" and result["token_env"] == VAR
        assert result["health"]["ok"] and result["health"]["tools"] > 5, result["health"]
        assert token not in Path(result["config_path"]).read_text()
    assert "(HTTP) - ✔ Connected" in host(laptop, tmp_path, "claude", "mcp", "list")
    assert "connected" in host(laptop, tmp_path, "opencode", "mcp", "list")
    got = json.loads(host(laptop, tmp_path, "codex", "mcp", "get", "pyro", "--json"))
    assert got["transport"]["url"] == server.url + "/mcp"
    assert got["transport"]["bearer_token_env_var"] == VAR
    checked = pyro(laptop, tmp_path, "host", "doctor", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for report in json.loads(checked.stdout)["hosts"]:
        assert report["status"] == "ok" and report["health"]["ok"], report
        assert report["entry"] == {"url": server.url + "/mcp", "token_env": VAR}
    wrong = {**laptop, VAR: "pyro_wrong"}
    doctored = json.loads(pyro(wrong, tmp_path, "host", "doctor", "--json").stdout)
    assert not any(report["health"]["ok"] for report in doctored["hosts"])
    assert "401" in host(wrong, tmp_path, "claude", "mcp", "list")
    assert "needs authentication" in host(wrong, tmp_path, "opencode", "mcp", "list")
