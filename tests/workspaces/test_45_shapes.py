"""pyro-mcp 4.5's SDK call shapes (../shared/seed-parity.md, "SDK call shapes"):
each works beside today's and means the same; any other shape is an
InvalidArgument that names the accepted forms."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from pyro_mcp import Pyro, create_server
from pyro_mcp.errors import InvalidArgument
from pyro_mcp.workspaces import secrets, transfer
from pyro_mcp.workspaces.processes import parse_publish, parse_readiness

TOKEN = "tok-45-shape-secret"


def test_secret_env_takes_a_list_or_a_mapping_and_nothing_else() -> None:
    known = ["API_TOKEN", "OTHER"]
    assert secrets.parse_secret_env(["API_TOKEN", "OTHER:T"], known) == {
        "API_TOKEN": "API_TOKEN",
        "T": "OTHER",
    }
    assert secrets.parse_secret_env({"API_TOKEN": "API_TOKEN", "T": "OTHER"}, known) == {
        "API_TOKEN": "API_TOKEN",
        "T": "OTHER",
    }
    for bad in ("API_TOKEN", [1], {"T": 2}):
        with pytest.raises(InvalidArgument, match=r"NAME\[:ENV_VAR\].*ENV_VAR"):
            secrets.parse_secret_env(bad, known)  # type: ignore[arg-type]


def test_the_secrets_list_form_is_the_mappings_form() -> None:
    literal, files = secrets.from_list(
        [
            {"name": "A", "value": "value-of-a"},
            {"name": "B", "file_path": "/tmp/b"},
            {"name": "C", "value": "value-of-c", "hosts": ["api.example.org"]},
        ],
        {"D": "/tmp/d"},
    )
    assert literal == {
        "A": "value-of-a",
        "C": {"value": "value-of-c", "hosts": ["api.example.org"]},
    }
    assert files == {"B": "/tmp/b", "D": "/tmp/d"}
    for bad in (
        "A=x",
        [{"value": "x"}],
        [{"name": "A", "value": "x", "file_path": "/p"}],
        [{"name": "A", "secret": "x"}],
        [{"name": "A", "value": "x"}, {"name": "A", "value": "y"}],
        ["A"],
    ):
        with pytest.raises(InvalidArgument, match="secrets"):
            secrets.from_list(bad, None)


def test_published_ports_take_a_string_or_a_mapping() -> None:
    assert parse_publish("8080") == (None, 8080)
    assert parse_publish("18080:8080") == (18080, 8080)
    assert parse_publish({"guest_port": 8080}) == (None, 8080)
    assert parse_publish({"guest_port": 8080, "host_port": 18080}) == (18080, 8080)
    for bad in ({"guest": 1}, {"guest_port": "8080"}, {"guest_port": 0}, [8080], True):
        with pytest.raises(InvalidArgument, match="guest_port"):
            parse_publish(bad)


def test_readiness_takes_the_4_5_mapping_and_nothing_else() -> None:
    assert parse_readiness({"type": "file", "path": "/tmp/up"}) == ("file", "/tmp/up")
    assert parse_readiness({"type": "tcp", "address": "127.0.0.1:8080"}) == (
        "tcp",
        "127.0.0.1:8080",
    )
    assert parse_readiness({"type": "http", "url": "http://x/"}) == ("http", "http://x/")
    assert parse_readiness({"type": "command", "command": "true"}) == ("command", "true")
    for bad in (
        {"type": "tcp", "path": "x"},
        {"type": "file"},
        {"type": "ping", "address": "x"},
        {"type": "file", "path": "x", "extra": 1},
        {"type": "file", "path": ""},
        ["file", "x"],
        "file:x",
    ):
        with pytest.raises(InvalidArgument, match='"type": "tcp", "address"'):
            parse_readiness(bad)


def test_labels_take_a_mapping_and_nothing_else() -> None:
    from pyro_mcp.workspaces.service import check_labels

    assert check_labels({"issue": "123"}) == {"issue": "123"}
    for bad in (["issue=123"], "issue=123", {"bad key": "x"}, {"k": 1}):
        with pytest.raises(InvalidArgument, match="labels"):
            check_labels(bad)  # type: ignore[arg-type]


def test_an_export_makes_missing_parents_and_unmakes_them_when_it_fails(tmp_path: Path) -> None:
    with transfer.placing(tmp_path / "a" / "b" / "out.txt", False) as output:
        output.write_text("x")
    assert (tmp_path / "a" / "b" / "out.txt").read_text() == "x"
    with pytest.raises(RuntimeError), transfer.placing(tmp_path / "c" / "d" / "out", False):
        raise RuntimeError("the guest went away")
    assert not (tmp_path / "c").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument, match="not a directory"):
        transfer.check_output(tmp_path / "file" / "x" / "out", False)


def test_allow_host_compat_is_taken_as_false_only(tmp_path: Path) -> None:
    pyro = Pyro(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    for call in (pyro.run_in_vm, pyro.create_vm):
        with pytest.raises(InvalidArgument, match="no host mode"):
            call("debian:12", allow_host_compat=True)  # type: ignore[operator]


def test_the_4_5_import_paths() -> None:
    from pyro_mcp.api import Pyro as ApiPyro
    from pyro_mcp.daily_loop import DEFAULT_PREPARE_ENVIRONMENT
    from pyro_mcp.vm_manager import (
        DEFAULT_ALLOW_HOST_COMPAT,
        DEFAULT_MEM_MIB,
        DEFAULT_TIMEOUT_SECONDS,
        DEFAULT_TTL_SECONDS,
        DEFAULT_VCPU_COUNT,
    )

    assert ApiPyro is Pyro and DEFAULT_PREPARE_ENVIRONMENT == "debian:12"
    assert (DEFAULT_VCPU_COUNT, DEFAULT_MEM_MIB, DEFAULT_TIMEOUT_SECONDS) == (1, 1024, 30)
    assert DEFAULT_TTL_SECONDS > DEFAULT_TIMEOUT_SECONDS and DEFAULT_ALLOW_HOST_COMPAT is False
    done = subprocess.run(
        [sys.executable, "-m", "pyro_mcp.cli", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("pyro ")


@pytest.mark.vm
def test_a_program_in_the_4_5_shapes_runs_against_a_real_guest(
    pyro: Pyro, tmp_path: Path, warm_environment: dict[str, Any]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-secret-45\n")
    ws = pyro.create_workspace(
        network_policy="egress+published-ports",
        secrets=[
            {"name": "API_TOKEN", "value": TOKEN},
            {"name": "FILE_TOKEN", "file_path": str(token_file)},
        ],
    )["workspace_id"]
    ran = pyro.exec_workspace(
        ws,
        'test "$API_TOKEN" = "$(cat /run/pyro-secrets/API_TOKEN)" && echo "$F"',
        secret_env={"API_TOKEN": "API_TOKEN", "F": "FILE_TOKEN"},
    )
    # The file secret reached the command as F, and comes back redacted.
    assert ran["exit_code"] == 0 and ran["stdout"] == "[REDACTED:FILE_TOKEN]\n", ran
    started = pyro.start_service(
        ws,
        "web",
        "python3 -m http.server 8080",
        readiness={"type": "tcp", "address": "127.0.0.1:8080"},
        published_ports=[{"guest_port": 8080}],
        secret_env={"API_TOKEN": "API_TOKEN"},
    )
    assert started["state"] == "running", started
    host_port = started["published_ports"][0]["host_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=30) as answer:
        assert answer.status == 200
    pyro.delete_workspace(ws)


def test_results_carry_the_4_5_field_names(pyro: Pyro, tmp_path: Path) -> None:
    """../shared/seed-parity.md, "Result fields": the 4.5 names, with real guests."""
    created = pyro.create_workspace(name="fields")
    ws = created["workspace_id"]
    assert created["workspace_seed"] == {
        "mode": "empty",
        "seed_path": None,
        "destination": "/workspace",
        "entry_count": 0,
        "bytes_written": 0,
        "origin_kind": "none",
        "origin_ref": "",
    }
    written = pyro.write_workspace_file(ws, "app.py", "print('hi')\n")
    assert written["bytes_written"] == 12 and "bytes" not in written
    listing = pyro.list_workspace_files(ws)
    assert listing["path"] == "/workspace"
    assert listing["entries"] == [
        {
            "path": "/workspace/app.py",
            "artifact_type": "file",
            "size_bytes": 12,
            "link_target": None,
            "mode": 0o644,
        }
    ]
    listed = pyro.list_workspaces()
    assert listed["count"] == 1 and listed["workspaces"][0]["workspace_id"] == ws
    ran = pyro.exec_workspace(ws, "true")
    assert ran["execution_mode"] == "guest_virtio_serial"
    patch = "--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-print('hi')\n+print('hello')\n"
    assert pyro.apply_workspace_patch(ws, patch)["changed"] is True
    summary = pyro.diff_workspace(ws)["summary"]
    assert summary["total"] == 1 and summary["added"] == 1  # added since the (empty) seed
    exported = pyro.export_workspace(ws, "app.py", tmp_path / "made" / "for-it" / "app.py")
    assert exported["artifact_type"] == "file" and "type" not in exported
    assert (tmp_path / "made" / "for-it" / "app.py").read_text() == "print('hello')\n"
    logs = pyro.logs_workspace(ws)
    assert logs["count"] == len(logs["entries"]) > 0
    pyro.start_service(ws, "sleeper", "sleep 300")
    services = pyro.list_services(ws)
    assert services["count"] == 1 and services["running_count"] == 1
    assert pyro.logs_service(ws, "sleeper")["stdout"] == ""
    made = pyro.create_snapshot(ws, "mark")
    assert made["snapshot"]["snapshot_name"] == "mark" and made["snapshot"]["kind"] == "named"
    snapshots = pyro.list_snapshots(ws)
    assert snapshots["count"] == 2
    assert [s["snapshot_name"] for s in snapshots["snapshots"]] == ["baseline", "mark"]
    review = pyro.summarize_workspace(ws)
    assert review["changes"]["available"] is True and review["changes"]["summary"]["total"] == 1
    assert [e["output"] for e in review["artifacts"]["exports"]] == [
        str(tmp_path / "made" / "for-it" / "app.py")
    ]
    assert review["snapshots"]["named_count"] == 1
    assert [(e["name"], e["action"]) for e in review["snapshots"]["events"]] == [("mark", "create")]
    assert [(e["name"], e["state"]) for e in review["services"]["events"]] == [
        ("sleeper", "running")
    ]
    reset = pyro.reset_workspace(ws, snapshot="mark")
    assert reset["reset_count"] == 1 and reset["workspace_reset"] == {"snapshot_name": "mark"}
    assert pyro.reset_workspace(ws)["workspace_reset"]["snapshot_name"] == "baseline"
    pyro.write_workspace_file(ws, "app.py", "print('hi')\n")  # the baseline is empty
    pyro.stop_workspace(ws, discard_memory=True)
    stopped = pyro.summarize_workspace(ws)["changes"]
    assert stopped["available"] is False and "start it" in stopped["reason"]
    read = pyro.read_workspace_disk(ws, "app.py", max_bytes=5)
    assert read["size_bytes"] == 12 and read["max_bytes"] == 5 and read["truncated"]
    pyro.delete_workspace(ws)


@pytest.mark.vm
def test_create_server_seeds_from_a_plain_folder_and_call_tool_unpacks(
    pyro: Pyro, tmp_path: Path, warm_environment: dict[str, Any]
) -> None:
    folder = tmp_path / "plain"  # no Git anywhere around it
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "hello.txt").write_text("hi\n")
    server = create_server(pyro=pyro, project_path=folder)

    async def chat() -> None:
        content, created = await server.call_tool("workspace_create", {})
        assert created["origin_kind"] == "project_path" and created["origin_ref"] == str(folder)
        assert created["workspace_seed"]["entry_count"] == 1 and content
        ws = created["workspace_id"]
        outcome = await server.call_tool(
            "workspace_exec", {"workspace_id": ws, "command": "cat src/hello.txt"}
        )
        _, ran = outcome
        assert ran["stdout"] == "hi\n" and outcome.structured_content == ran
        await server.call_tool("workspace_delete", {"workspace_id": ws})

    anyio.run(chat)
