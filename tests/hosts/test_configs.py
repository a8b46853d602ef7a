"""Host config files: snippets, in-place repair that keeps the user's content, bad input."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import json5
import pytest

from pyro_mcp import hosts
from pyro_mcp.errors import HostSetupError, InvalidArgument
from pyro_mcp.hosts import service
from pyro_mcp.hosts.configs import get_host
from pyro_mcp.hosts.server_command import ServerOptions, pyro_launcher

OPENCODE_JSONC = """{
  // my settings, keep them
  "$schema": "https://opencode.ai/config.json",
  "theme": "dark",
  "mcp": {
    "other": {"type": "local", "command": ["/bin/true"]}, /* another server */
    "pyro": {"type": "local", "command": ["pyro", "mcp", "serve"]}
  }
}
"""

CODEX_TOML = """# my codex settings
model = "o3"

[mcp_servers.other]
command = "/bin/true" # another server

[mcp_servers.pyro]
command = "pyro"
args = ["mcp", "serve"]
startup_timeout_sec = 40
"""


def test_every_snippet_names_this_pyro_by_absolute_path() -> None:
    options = ServerOptions(mode="repro-fix", environment="debian:12-build")
    command = pyro_launcher()[0]
    assert Path(command).is_absolute()
    generic = json.loads(service.print_config("generic", options)["snippet"])
    entry = generic["mcpServers"]["pyro"]
    assert entry["command"] == command
    assert entry["args"][-6:] == [
        "mcp",
        "serve",
        "--mode",
        "repro-fix",
        "--environment",
        "debian:12-build",
    ]
    opencode = json.loads(service.print_config("opencode", options)["snippet"])
    assert opencode["mcp"]["pyro"]["type"] == "local"
    assert opencode["mcp"]["pyro"]["command"][0] == command
    claude = json.loads(service.print_config("claude-code", options)["snippet"])
    assert claude["mcpServers"]["pyro"]["type"] == "stdio"
    codex = tomllib.loads(service.print_config("codex", options)["snippet"])
    assert codex["mcp_servers"]["pyro"]["command"] == command


def test_a_project_path_is_made_absolute_for_hosts_that_start_elsewhere(tmp_path: Path) -> None:
    args = ServerOptions(project_path=str(tmp_path / "." / "repo")).serve_args()
    assert args[args.index("--project-path") + 1] == str((tmp_path / "repo").resolve())


def test_bad_choices_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(
        InvalidArgument, match="claude-code, codex, opencode, claude-desktop, cursor, generic"
    ):
        get_host("windsurf")
    with pytest.raises(InvalidArgument, match="not both"):
        ServerOptions(mode="inspect", profile="vm-run")
    with pytest.raises(InvalidArgument, match="--repo-url"):
        ServerOptions(repo_ref="v1")
    with pytest.raises(InvalidArgument, match="supports user"):
        service.print_config("codex", ServerOptions(), scope="project")
    with pytest.raises(HostSetupError, match="print-config generic"):
        hosts.connect_host("generic")
    with pytest.raises(HostSetupError, match="print-config generic"):
        hosts.repair_host("generic")


def test_repairing_opencode_keeps_comments_and_other_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / ".config" / "opencode" / "opencode.jsonc"
    path.parent.mkdir(parents=True)
    path.write_text(OPENCODE_JSONC)
    result = hosts.repair_host("opencode")
    assert result["config_path"] == str(path)
    assert Path(result["backup"]).read_text() == OPENCODE_JSONC
    text = path.read_text()
    assert "// my settings, keep them" in text and "/* another server */" in text
    data = json5.loads(text)
    assert data["theme"] == "dark" and data["mcp"]["other"]["command"] == ["/bin/true"]
    assert data["mcp"]["pyro"]["command"] == [*pyro_launcher(), "mcp", "serve"]


def test_repairing_codex_keeps_comments_other_servers_and_its_own_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / ".codex" / "config.toml"
    path.parent.mkdir()
    path.write_text(CODEX_TOML)
    path.chmod(0o600)
    hosts.repair_host("codex", ServerOptions(no_project_source=True))
    text = path.read_text()
    assert "# my codex settings" in text and "# another server" in text
    data = tomllib.loads(text)
    assert data["mcp_servers"]["other"]["command"] == "/bin/true"
    assert data["mcp_servers"]["pyro"]["startup_timeout_sec"] == 40
    assert data["mcp_servers"]["pyro"]["args"][-3:] == ["mcp", "serve", "--no-project-source"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_repair_creates_a_missing_config_and_claude_code_scopes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    (tmp_path / ".claude.json").write_text(json.dumps({"numStartups": 3, "mcpServers": {}}))
    hosts.repair_host("claude-code", scope="local")
    data = json.loads((tmp_path / ".claude.json").read_text())
    assert data["numStartups"] == 3
    assert data["projects"][str(project)]["mcpServers"]["pyro"]["command"] == pyro_launcher()[0]
    hosts.repair_host("claude-code", scope="project")
    assert json.loads((project / ".mcp.json").read_text())["mcpServers"]["pyro"]["type"] == "stdio"
    created = hosts.repair_host("opencode", scope="project")
    assert created["backup"] is None and (project / "opencode.json").exists()


def test_an_invalid_config_is_left_alone_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / ".codex" / "config.toml"
    path.parent.mkdir()
    path.write_text("[mcp_servers.pyro\ncommand = ")
    with pytest.raises(
        HostSetupError, match=r"config\.toml is not valid TOML.*nothing was written"
    ):
        hosts.repair_host("codex")
    assert path.read_text() == "[mcp_servers.pyro\ncommand = "
    assert list(path.parent.iterdir()) == [path]  # no backup of a file left untouched
    report = service.doctor(health=False)
    codex = next(h for h in report["hosts"] if h["host"] == "codex")
    assert codex["status"] == "drifted" and "not valid TOML" in codex["reason"]


def test_connect_without_the_host_cli_says_how_to_install_it_and_what_to_paste(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(HostSetupError) as failure:
        hosts.connect_host("claude-code")
    message = str(failure.value)
    assert "npm install -g @anthropic-ai/claude-code" in message
    assert '"mcpServers"' in message and pyro_launcher()[0] in message
    assert not (tmp_path / ".claude.json").exists()
    report = service.doctor(health=False)
    assert {h["host"]: h["status"] for h in report["hosts"]} == {
        "claude-code": "unavailable",
        "codex": "unavailable",
        "opencode": "unavailable",
    }


def test_installed_package_registers_the_installed_pyro(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyro_mcp.hosts.server_command import ServerOptions

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(InvalidArgument, match="uv tool install"):
        hosts.host_config("generic", ServerOptions(installed_package=True))
    installed = bin_dir / "pyro"
    installed.write_text("#!/bin/sh\n")
    installed.chmod(0o755)
    snippet = hosts.host_config("generic", ServerOptions(installed_package=True))
    assert snippet["command"] == str(installed)
    assert snippet["args"] == ["mcp", "serve"]


def test_claude_desktop_and_cursor_get_a_snippet_to_paste_and_where_it_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    command = pyro_launcher()[0]
    for host, where in (
        ("claude-desktop", tmp_path / ".config" / "Claude" / "claude_desktop_config.json"),
        ("cursor", tmp_path / ".cursor" / "mcp.json"),
    ):
        shown = hosts.host_config(host)
        assert shown["config_path"] == str(where)
        assert shown["rendered_config"] == shown["snippet"]
        assert shown["server_command"] == [command, *shown["args"]]
        entry = json.loads(shown["snippet"])["mcpServers"]["pyro"]
        assert entry == {"command": command, "args": ["mcp", "serve"]}
    project = hosts.host_config("cursor", scope="project")
    assert project["config_path"] == str(Path.cwd().resolve() / ".cursor" / "mcp.json")


def test_doctor_takes_the_server_flags_and_a_config_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    mine = tmp_path / "elsewhere" / "config.toml"
    mine.parent.mkdir()
    repaired = hosts.repair_host("codex", ServerOptions(mode="repro-fix"), config_path=mine)
    assert repaired["config_path"] == str(mine) and repaired["backup_path"] is None
    assert repaired["server_command"][-4:] == ["mcp", "serve", "--mode", "repro-fix"]
    assert not (tmp_path / ".codex").exists()  # only the named file was written

    def codex(**asked: object) -> dict:
        report = hosts.doctor_hosts(health=False, host="codex", config_path=mine, **asked)
        (only,) = report["hosts"]
        return only

    same = codex(options=ServerOptions(mode="repro-fix"))
    assert same["status"] == "ok" and same["configured"] is True
    assert same["recommended_modes"] == ["repro-fix", "inspect"]
    other = codex(options=ServerOptions(mode="inspect"))
    assert other["status"] == "drifted" and "--mode repro-fix" in other["details"]
    # The fix repeats every flag given, --config-path too (that file is repaired).
    assert other["repair_command"] == (
        f"pyro host repair codex --mode inspect --config-path {mine}"
    )
    # Without a host, the file says whose it is.
    (told,) = hosts.doctor_hosts(
        health=False, config_path=mine, options=ServerOptions(mode="repro-fix")
    )["hosts"]
    assert (told["host"], told["status"]) == ("codex", "ok")
    opencode = tmp_path / "opencode.json"
    opencode.write_text(OPENCODE_JSONC)
    assert hosts.doctor_hosts(health=False, config_path=opencode)["hosts"][0]["host"] == "opencode"
    claude = tmp_path / "servers.json"
    claude.write_text('{"mcpServers": {}}')
    assert hosts.doctor_hosts(health=False, config_path=claude)["hosts"][0]["host"] == "claude-code"
    unknown = tmp_path / "settings.json"
    unknown.write_text("{}")
    with pytest.raises(InvalidArgument, match="name the host"):
        hosts.doctor_hosts(health=False, config_path=unknown)
    with pytest.raises(InvalidArgument, match="print-config cursor"):
        hosts.doctor_hosts(health=False, host="cursor")


def test_print_config_output_makes_its_folders_and_refuses_what_is_not_a_file(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    def print_config(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pyro_mcp.cli.main", "host", "print-config", "codex", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=False,
        )

    made = print_config("--output", "new/deeper/config.toml", "--json")
    assert made.returncode == 0, made.stderr
    written = tmp_path / "new" / "deeper" / "config.toml"
    assert json.loads(made.stdout)["output_path"] == "new/deeper/config.toml"
    assert "[mcp_servers.pyro]" in written.read_text()
    folder = print_config("--output", "new")
    assert folder.returncode == 2 and "new is a folder" in folder.stderr
    (tmp_path / "plain").write_text("a file")
    below = print_config("--output", "plain/config.toml")
    assert below.returncode == 2 and "plain is not a folder" in below.stderr
    assert "Traceback" not in folder.stderr + below.stderr


def test_a_mode_may_recommend_the_default_environment() -> None:
    from pyro_mcp.mcp import profiles

    assert profiles.recommended_environment("cold-start", "debian:12", "", "debian:12") == (
        "debian:12-build",
        "recommended by mode cold-start",
    )
    mine = ("proj:devcontainer-1", "the project's environment")
    assert profiles.recommended_environment("cold-start", *mine, "debian:12") == mine
    assert profiles.recommended_environment("inspect", "debian:12", "", "debian:12") == (
        "debian:12",
        "",
    )
    entry = service.Entry("/bin/pyro", ["mcp", "serve", "--mode", "cold-start"])
    chosen = service.environment_of(entry, {"origin_kind": "none"})
    assert chosen["name"] == "debian:12-build"
    named = service.Entry("/bin/pyro", [*entry.args, "--environment", "debian:12"])
    assert service.environment_of(named, {"origin_kind": "none"})["name"] == "debian:12"
