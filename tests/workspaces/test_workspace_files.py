"""Files, patches, diff, sync, export, reset and summary against real guests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from pyro_mcp import InvalidArgument, NotFound, PatchConflict, Pyro, StateError, VMError
from pyro_mcp.vm.backend import wait_for_exit
from tests.cli_helper import pyro_cli

pytestmark = pytest.mark.vm

APP = "def add(a, b):\n    return a - b\n"
TEST = (
    "python3 -c 'import sys; sys.path.insert(0, \"src\"); import app; assert app.add(2, 2) == 4'\n"
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text(APP)
    (root / "test.sh").write_text(TEST)
    return root


def fix_patch(tmp_path: Path) -> str:
    a, b = tmp_path / "pa" / "src", tmp_path / "pb" / "src"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    (a / "app.py").write_text(APP)
    (b / "app.py").write_text(APP.replace("a - b", "a + b"))
    done = subprocess.run(
        ["git", "diff", "--no-index", "--no-prefix", "pa/src/app.py", "pb/src/app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.replace("pa/src/app.py", "a/src/app.py").replace(
        "pb/src/app.py", "b/src/app.py"
    )


def test_the_repro_fix_loop_through_the_cli(
    cli_env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    ws = pyro_cli(
        cli_env, "workspace", "create", "--seed-path", str(repo), "--id-only"
    ).stdout.strip()
    assert pyro_cli(cli_env, "workspace", "exec", ws, "--", "sh", "test.sh").returncode == 1
    listing = json.loads(
        pyro_cli(cli_env, "workspace", "file", "list", ws, "src", "--recursive", "--json").stdout
    )
    assert "/workspace/src/app.py" in [e["path"] for e in listing["entries"]]
    read = pyro_cli(cli_env, "workspace", "file", "read", ws, "src/app.py", "--content-only")
    assert read.stdout == APP

    (tmp_path / "fix.patch").write_text(fix_patch(tmp_path))
    applied = pyro_cli(
        cli_env, "workspace", "patch", "apply", ws, "--patch-file", str(tmp_path / "fix.patch")
    )
    assert applied.returncode == 0, applied.stderr
    assert pyro_cli(cli_env, "workspace", "exec", ws, "--", "sh", "test.sh").returncode == 0

    (tmp_path / "notes.txt").write_text("investigated\n")
    wrote = pyro_cli(
        cli_env,
        "workspace",
        "file",
        "write",
        ws,
        "notes.txt",
        "--text-file",
        str(tmp_path / "notes.txt"),
    )
    assert wrote.returncode == 0
    changes = tmp_path / "changes"
    (changes / "lib").mkdir(parents=True)
    (changes / "lib" / "util.py").write_text("X = 1\n")
    pushed = json.loads(
        pyro_cli(
            cli_env, "workspace", "sync", "push", ws, str(changes), "--dest", "src", "--json"
        ).stdout
    )
    assert (pushed["files"], pushed["dest"]) == (1, "src")

    diff = json.loads(pyro_cli(cli_env, "workspace", "diff", ws, "--json").stdout)
    statuses = {c["path"]: c["status"] for c in diff["changes"]}
    assert statuses["src/app.py"] == "modified" and statuses["notes.txt"] == "added"
    assert statuses["src/lib/util.py"] == "added"
    assert "+    return a + b" in diff["patch"]

    exported = pyro_cli(
        cli_env, "workspace", "export", ws, "src/app.py", "--output", str(tmp_path / "app.py")
    )
    assert exported.returncode == 0, exported.stderr
    assert "a + b" in (tmp_path / "app.py").read_text()
    again = pyro_cli(
        cli_env, "workspace", "export", ws, "src/app.py", "--output", str(tmp_path / "app.py")
    )
    assert again.returncode == 2 and "--overwrite" in again.stderr
    tree = pyro_cli(
        cli_env, "workspace", "export", ws, "src", "--output", str(tmp_path / "src-out")
    )
    assert (
        tree.returncode == 0 and (tmp_path / "src-out" / "lib" / "util.py").read_text() == "X = 1\n"
    )

    summary = json.loads(pyro_cli(cli_env, "workspace", "summary", ws, "--json").stdout)
    assert [c["exit_code"] for c in summary["commands"]] == [1, 0]
    assert {k: len(v) for k, v in summary["operations"].items()} == {
        "write": 1,
        "patch": 1,
        "sync": 1,
        "export": 2,
    }
    human = pyro_cli(cli_env, "workspace", "summary", ws).stdout
    assert "commands: 2 run, 1 failed" in human and "src/app.py" in human

    reset = pyro_cli(cli_env, "workspace", "reset", ws, "--json")
    assert reset.returncode == 0, reset.stderr
    assert (
        json.loads(pyro_cli(cli_env, "workspace", "diff", ws, "--json").stdout)["changed"] is False
    )
    assert (
        pyro_cli(cli_env, "workspace", "file", "read", ws, "src/app.py", "--content-only").stdout
        == APP
    )
    assert (
        json.loads(pyro_cli(cli_env, "workspace", "summary", ws, "--json").stdout)["commands"] == []
    )
    assert pyro_cli(cli_env, "workspace", "delete", ws).returncode == 0


def test_reset_recreates_the_whole_sandbox(pyro: Pyro) -> None:
    ws = pyro.create_workspace(name="keep-me", labels={"a": "b"})["workspace_id"]
    pyro.exec_workspace(ws, "touch /root/installed /tmp/scratch; sleep 300 >/dev/null 2>&1 &")
    status = pyro.reset_workspace(ws)
    assert (status["workspace_id"], status["name"], status["labels"]) == (ws, "keep-me", {"a": "b"})
    after = pyro.exec_workspace(ws, "ls /root /tmp; pgrep -c sleep || true")["stdout"]
    assert "installed" not in after and "scratch" not in after
    assert after.strip().endswith("0")
    assert [e["kind"] for e in pyro.logs_workspace(ws)["entries"]] == [
        "seed",
        "exec",
        "reset",
        "exec",
    ]
    pyro.delete_workspace(ws)


def test_file_and_patch_bad_input_changes_nothing(pyro: Pyro, repo: Path) -> None:
    ws = pyro.create_workspace(seed_path=repo)["workspace_id"]
    pyro.exec_workspace(ws, "ln -s /etc/passwd src/passwd; ln -s /etc etcdir")
    for path in ("../etc/passwd", "/etc/passwd", "src/passwd", "etcdir/shadow"):
        with pytest.raises(InvalidArgument, match="outside"):
            pyro.read_workspace_file(ws, path)
    with pytest.raises(InvalidArgument, match="directory"):
        pyro.read_workspace_file(ws, "src")
    with pytest.raises(InvalidArgument, match="directory"):
        pyro.write_workspace_file(ws, "src", "x")
    with pytest.raises(InvalidArgument, match="outside"):
        pyro.write_workspace_file(ws, "etcdir/evil", "x")
    with pytest.raises(InvalidArgument, match="does not exist"):
        pyro.read_workspace_file(ws, "missing.txt")

    two_files = (
        "--- /dev/null\n+++ b/created.txt\n@@ -0,0 +1 @@\n+new\n"
        "--- a/src/app.py\n+++ b/src/app.py\n@@ -1,2 +1,2 @@\n"
        " def add(a, b):\n-    return a * b\n+    return 0\n"
    )
    with pytest.raises(PatchConflict, match=r"src/app\.py: hunk 1"):
        pyro.apply_workspace_patch(ws, two_files)
    with pytest.raises(InvalidArgument, match="outside /workspace"):
        pyro.apply_workspace_patch(ws, "--- a/../x\n+++ b/../x\n@@ -1 +1 @@\n-a\n+b\n")
    assert pyro.diff_workspace(ws)["changes"] == [
        {"path": p, "status": "added", "type": "symlink", "binary": False}
        for p in ("etcdir", "src/passwd")
    ]
    assert pyro.read_workspace_file(ws, "src/app.py")["content"] == APP

    pyro.write_workspace_file(ws, "blob.bin", b"\x00\xff\x00")
    blob = pyro.read_workspace_file(ws, "blob.bin")
    assert blob["binary"] is True and blob["content"] is None and blob["content_base64"] == "AP8A"
    big = pyro.read_workspace_file(ws, "src/app.py", max_bytes=5)
    assert (big["content"], big["truncated"]) == ("def a", True)
    pyro.delete_workspace(ws)


def test_stopped_deleted_and_killed_workspaces_give_clear_errors(pyro: Pyro) -> None:
    ws = pyro.create_workspace(name="fragile")["workspace_id"]
    pyro.stop_workspace(ws, discard_memory=True)
    with pytest.raises(StateError, match="pyro workspace start fragile"):
        pyro.diff_workspace(ws)
    assert (
        pyro.summarize_workspace(ws)["note"]
        == "the workspace is stopped; start it to see file changes"
    )
    pyro.start_workspace(ws)

    supervisor = pyro.status_vm(pyro.status_workspace(ws)["vm_id"])["supervisor_pid"]
    qemu = int(Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()[0])
    import threading

    killer = threading.Timer(2.0, os.kill, (qemu, signal.SIGKILL))
    killer.start()
    with pytest.raises(VMError, match="the VM died"):
        pyro.exec_workspace(ws, "sleep 60")
    killer.join()
    assert wait_for_exit(qemu, 10)
    status = pyro.status_workspace(ws)
    assert status["state"] == "stopped" and "QEMU exited" in status["last_error"]
    pyro.reset_workspace(ws)
    assert pyro.exec_workspace(ws, "echo recovered")["stdout"] == "recovered\n"

    pyro.delete_workspace(ws)
    with pytest.raises(NotFound, match="no longer exists: deleted on request"):
        pyro.diff_workspace(ws)


def test_sync_push_refuses_bad_sources(pyro: Pyro, tmp_path: Path) -> None:
    ws = pyro.create_workspace()["workspace_id"]
    with pytest.raises(InvalidArgument, match="does not exist"):
        pyro.push_workspace_sync(ws, tmp_path / "missing")
    with pytest.raises(InvalidArgument, match="outside /workspace"):
        pyro.push_workspace_sync(ws, tmp_path, dest="../etc")
    assert pyro.diff_workspace(ws)["changed"] is False
    pyro.delete_workspace(ws)
