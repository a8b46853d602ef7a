"""Workspaces against real guests, through the CLI (separate processes) and the SDK."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp import InvalidArgument, NotFound, Pyro
from tests.cli_helper import pyro_cli

pytestmark = pytest.mark.vm


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("print('hello from the seed')\n")
    (root / "Makefile").write_text("test:\n\tpython3 src/app.py\n")
    return root


def test_a_workspace_lives_across_separate_cli_calls(cli_env: dict[str, str], repo: Path) -> None:
    created = pyro_cli(
        cli_env,
        "workspace",
        "create",
        "debian:12",
        "--seed-path",
        str(repo),
        "--name",
        "repro-fix",
        "--label",
        "issue=123",
        "--id-only",
    )
    assert created.returncode == 0, created.stderr
    ws = created.stdout.strip()
    assert ws.startswith("ws-")

    listed = json.loads(pyro_cli(cli_env, "workspace", "list", "--json").stdout)
    assert listed["count"] == 1  # pyro-mcp 4.5's {count, workspaces}
    assert [
        (w["workspace_id"], w["name"], w["labels"], w["state"]) for w in listed["workspaces"]
    ] == [(ws, "repro-fix", {"issue": "123"}, "running")]
    ran = pyro_cli(
        cli_env, "workspace", "exec", "repro-fix", "--", "sh", "-c", "pwd; python3 src/app.py"
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "/workspace\nhello from the seed\n"

    failed = pyro_cli(
        cli_env, "workspace", "exec", ws, "--json", "--", "sh", "-c", "echo no >&2; exit 4"
    )
    assert failed.returncode == 4
    assert {k: json.loads(failed.stdout)[k] for k in ("exit_code", "stderr", "timed_out")} == {
        "exit_code": 4,
        "stderr": "no\n",
        "timed_out": False,
    }

    journal = json.loads(pyro_cli(cli_env, "workspace", "logs", ws, "--json").stdout)["entries"]
    assert journal[0]["kind"] == "seed" and journal[0]["origin_kind"] == "seed_path"
    entries = [e for e in journal if e["kind"] == "exec"]
    assert [(e["command"], e["exit_code"], e["cwd"]) for e in entries] == [
        ("sh -c 'pwd; python3 src/app.py'", 0, "/workspace"),
        ("sh -c 'echo no >&2; exit 4'", 4, "/workspace"),
    ]
    assert entries[1]["stderr"] == "no\n" and entries[0]["duration_ms"] >= 0
    human = pyro_cli(cli_env, "workspace", "logs", ws).stdout.splitlines()
    assert "seed" in human[0] and "exit=4" in human[2]

    updated = json.loads(
        pyro_cli(
            cli_env,
            "workspace",
            "update",
            ws,
            "--label",
            "owner=me",
            "--clear-label",
            "issue",
            "--json",
        ).stdout
    )
    assert updated["labels"] == {"owner": "me"}
    status = json.loads(pyro_cli(cli_env, "workspace", "status", ws, "--json").stdout)
    assert status["seed"]["kind"] == "directory" and status["seed"]["file_count"] == 2
    assert status["command_count"] == 2

    assert pyro_cli(cli_env, "workspace", "delete", ws).returncode == 0
    gone = pyro_cli(cli_env, "workspace", "status", ws)
    assert gone.returncode == 1 and "no longer exists: deleted on request" in gone.stderr


def test_workspace_survives_stop_and_start_and_timeouts(pyro: Pyro, repo: Path) -> None:
    ws = pyro.create_workspace(seed_path=repo)["workspace_id"]
    pyro.exec_workspace(ws, "echo kept > src/note.txt")
    timed = pyro.exec_workspace(ws, "sleep 60", timeout_seconds=1)
    assert timed["timed_out"] is True
    assert pyro.exec_workspace(ws, "cat note.txt", cwd="src")["stdout"] == "kept\n"
    assert pyro.stop_workspace(ws, discard_memory=True)["state"] == "stopped"
    assert pyro.start_workspace(ws)["state"] == "running"
    assert pyro.exec_workspace(ws, ["cat", "src/note.txt"])["stdout"] == "kept\n"
    pyro.delete_workspace(ws)
    assert pyro.list_workspaces()["workspaces"] == []


def test_two_execs_at_once_in_one_workspace_both_finish(pyro: Pyro) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(
            target=lambda n=n: results.append(pyro.exec_workspace(ws, f"sleep 1; echo {n}"))
        )
        for n in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["stdout"] for r in results) == ["1\n", "2\n"]
    assert [e["kind"] for e in pyro.logs_workspace(ws)["entries"]] == ["seed", "exec", "exec"]
    pyro.delete_workspace(ws)


def test_bad_input_is_refused_and_leaves_nothing_behind(
    pyro: Pyro, tmp_path: Path, state_dir: Path
) -> None:
    archive = tmp_path / "evil.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("../../evil")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    with pytest.raises(InvalidArgument, match="outside the workspace"):
        pyro.create_workspace(seed_path=archive)
    with pytest.raises(InvalidArgument, match="does not exist"):
        pyro.create_workspace(seed_path=tmp_path / "missing")
    assert pyro.list_workspaces()["workspaces"] == [] and pyro.list_vms() == []
    assert list((state_dir / "workspaces").iterdir()) == []

    ws = pyro.create_workspace(name="only-one")["workspace_id"]
    with pytest.raises(InvalidArgument, match="exists"):
        pyro.create_workspace(name="only-one")
    with pytest.raises(InvalidArgument, match="outside /workspace"):
        pyro.exec_workspace(ws, "true", cwd="../etc")
    with pytest.raises(NotFound, match="pyro workspace list"):
        pyro.exec_workspace("ws-nope", "true")
    pyro.delete_workspace(ws)


def test_expired_workspaces_are_reaped_by_the_next_pyro_call(
    pyro: Pyro, state_dir: Path, cache_dir: Path
) -> None:
    ws = pyro.create_workspace(ttl_seconds=3600)["workspace_id"]
    keep = pyro.create_workspace()["workspace_id"]
    assert pyro.status_workspace(ws)["expires_at"] is not None
    # Let the hour pass: backdate the expiry instead of waiting.
    pyro._workspaces.store.update_workspace(ws, expires_at=time.time() - 1)
    Pyro(state_dir=state_dir, cache_dir=cache_dir)
    assert not (state_dir / "workspaces" / ws).exists()
    assert [w["workspace_id"] for w in pyro.list_workspaces()["workspaces"]] == [keep]
    with pytest.raises(NotFound):
        pyro.status_workspace(ws)


def test_the_remains_of_a_killed_create_are_cleaned_up(pyro: Pyro, state_dir: Path) -> None:
    # What a create killed after making its disks and VM record leaves behind.
    folder = state_dir / "workspaces" / "ws-killed"
    folder.mkdir(parents=True)
    (folder / "workspace.qcow2").write_bytes(b"")
    orphan = pyro._vms.create_vm(workspace_disk=folder / "workspace.qcow2")
    later = time.time() + 2 * 3600
    pyro._workspaces.reap_expired(now=later)
    assert not folder.exists()
    assert pyro.list_vms() == []
    with pytest.raises(NotFound):
        pyro.status_vm(orphan.vm_id)
