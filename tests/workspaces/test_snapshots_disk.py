"""Named snapshots and offline disk tools against real guests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pyro_mcp import InvalidArgument, NotFound, Pyro, StateError
from tests.cli_helper import pyro_cli

pytestmark = pytest.mark.vm


def fsck_clean(qcow2: Path, tmp_path: Path) -> bool:
    raw = tmp_path / f"{qcow2.stem}.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)], check=True)
    return (
        subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, check=False).returncode
        == 0
    )


def test_snapshots_are_consistent_while_running_and_reset_restores_them(
    pyro: Pyro, state_dir: Path, tmp_path: Path
) -> None:
    ws = pyro.create_workspace(name="snappy")["workspace_id"]
    pyro.write_workspace_file(ws, "state.txt", "checkpointed\n")
    writer = pyro.open_shell(ws)["shell_id"]
    pyro.write_shell(
        ws,
        writer,
        "i=0; while true; do i=$((i+1)); echo $i > counter; cp counter c$((i % 50)); done",
    )
    snapshot = pyro.create_snapshot(ws, "checkpoint")
    assert snapshot["name"] == "checkpoint" and snapshot["bytes"] > 0
    pyro.signal_shell(ws, writer, "INT")
    assert fsck_clean(state_dir / "workspaces" / ws / "snapshots" / "checkpoint.qcow2", tmp_path)

    pyro.write_workspace_file(ws, "state.txt", "later\n")
    pyro.exec_workspace(ws, "touch /root/installed")
    names = [s["name"] for s in pyro.list_snapshots(ws)["snapshots"]]
    assert names == ["baseline", "checkpoint"]

    with pytest.raises(NotFound, match="snapshots: baseline, checkpoint"):
        pyro.reset_workspace(ws, snapshot="nope")
    assert pyro.read_workspace_file(ws, "state.txt")["content"] == "later\n"  # untouched

    pyro.reset_workspace(ws, snapshot="checkpoint")
    assert pyro.read_workspace_file(ws, "state.txt")["content"] == "checkpointed\n"
    assert pyro.exec_workspace(ws, "ls /root")["stdout"] == ""
    assert any(c["path"] == "state.txt" for c in pyro.diff_workspace(ws)["changes"])  # vs baseline

    pyro.stop_workspace(ws)
    assert pyro.create_snapshot(ws, "offline")["name"] == "offline"  # a stopped one works too
    pyro.start_workspace(ws)
    assert [s["name"] for s in pyro.list_snapshots(ws)["snapshots"]] == [
        "baseline",
        "checkpoint",
        "offline",
    ]
    with pytest.raises(InvalidArgument, match="cannot be deleted"):
        pyro.delete_snapshot(ws, "baseline")
    with pytest.raises(InvalidArgument, match="reserved"):
        pyro.create_snapshot(ws, "baseline")
    with pytest.raises(InvalidArgument, match="exists"):
        pyro.create_snapshot(ws, "checkpoint")
    pyro.delete_snapshot(ws, "checkpoint")
    pyro.reset_workspace(ws)
    assert pyro.exec_workspace(ws, "test -e state.txt || echo gone")["stdout"] == "gone\n"
    pyro.delete_workspace(ws)


def test_disk_tools_read_a_stopped_workspace_offline(pyro: Pyro, tmp_path: Path) -> None:
    ws = pyro.create_workspace(secrets={"TOKEN": "not-on-the-disk"})["workspace_id"]
    pyro.write_workspace_file(ws, "src/app.py", "print('hi')\n")
    pyro.write_workspace_file(ws, "blob.bin", b"\x00\x01\x02")
    with pytest.raises(StateError, match="pyro workspace stop"):
        pyro.list_workspace_disk(ws)
    pyro.stop_workspace(ws)

    listing = pyro.list_workspace_disk(ws, recursive=True)
    paths = {e["path"].removeprefix("/workspace/"): e for e in listing["entries"]}
    assert set(paths) == {"src", "src/app.py", "blob.bin"}  # no lost+found, no runtime paths
    app = paths["src/app.py"]
    assert app["artifact_type"] == "file" and app["size_bytes"] == 12
    assert app["path"] == "/workspace/src/app.py" and listing["path"] == "/workspace"
    assert pyro.read_workspace_disk(ws, "src/app.py")["content"] == "print('hi')\n"
    assert pyro.read_workspace_disk(ws, "blob.bin")["binary"] is True
    with pytest.raises(InvalidArgument, match="not a regular file"):
        pyro.read_workspace_disk(ws, "src")
    with pytest.raises(InvalidArgument, match="does not exist"):
        pyro.read_workspace_disk(ws, "missing.txt")
    with pytest.raises(InvalidArgument, match="outside /workspace"):
        pyro.read_workspace_disk(ws, "../etc/passwd")

    image = tmp_path / "ws.ext4"
    exported = pyro.export_workspace_disk(ws, image)
    assert Path(exported["output_path"]) == image
    assert exported["disk_format"] == "raw ext4" and exported["bytes_written"] > 0
    assert (
        subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, check=False).returncode
        == 0
    )
    with pytest.raises(InvalidArgument, match="--overwrite"):
        pyro.export_workspace_disk(ws, image)
    pyro.delete_workspace(ws)


def test_snapshot_and_disk_commands_through_the_cli(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    ws = pyro_cli(cli_env, "workspace", "create", "--id-only").stdout.strip()
    pyro_cli(cli_env, "workspace", "exec", ws, "--", "sh", "-c", "echo v1 > f.txt")
    assert pyro_cli(cli_env, "workspace", "snapshot", "create", ws, "v1").returncode == 0
    pyro_cli(cli_env, "workspace", "exec", ws, "--", "sh", "-c", "echo v2 > f.txt")
    assert "v1" in pyro_cli(cli_env, "workspace", "snapshot", "list", ws).stdout
    assert pyro_cli(cli_env, "workspace", "reset", ws, "--snapshot", "v1").returncode == 0
    assert (
        pyro_cli(cli_env, "workspace", "file", "read", ws, "f.txt", "--content-only").stdout
        == "v1\n"
    )
    running = pyro_cli(cli_env, "workspace", "disk", "read", ws, "f.txt")
    assert running.returncode == 1 and "stop" in running.stderr
    pyro_cli(cli_env, "workspace", "stop", ws)
    assert pyro_cli(cli_env, "workspace", "disk", "read", ws, "f.txt").stdout == "v1\n"
    assert (
        pyro_cli(
            cli_env, "workspace", "disk", "export", ws, "--output", str(tmp_path / "d.ext4")
        ).returncode
        == 0
    )
    assert pyro_cli(cli_env, "workspace", "delete", ws).returncode == 0
