"""The whole workspace loop through a real ``pyro server``, by two principals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from pathlib import Path

import httpx2
import pytest

from pyro_mcp import InvalidArgument, NotFound, QuotaExceeded, __version__
from pyro_mcp.transport import wire
from tests.conftest import leaked_processes
from tests.server.conftest import RemoteServer, pyro_command, serving

WINDOWS_LIKE = Path(__file__).with_name("windows_like.py")

pytestmark = pytest.mark.vm

PATCH = "--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-print('hi')\n+print('hello')\n"


def test_the_workspace_loop_runs_through_the_remote_sdk(
    server: RemoteServer, git_project: Path, tmp_path: Path
) -> None:
    alice = server.sdk("alice")
    created = alice.create_workspace(project_path=git_project, name="loop")
    try:
        # The Git-tracked files, read on this side; the server's spool path never shows.
        assert created["seed"]["kind"] == "project"
        assert created["seed"]["source"] == str(git_project)
        listed = alice.exec_workspace("loop", "ls -A /workspace")["stdout"].split()
        assert "app.py" in listed and "debug.log" not in listed and "notes.txt" not in listed
        assert alice.apply_workspace_patch("loop", PATCH)["changed"] is True
        assert "+print('hello')" in alice.diff_workspace("loop")["patch"]
        exported = alice.export_workspace("loop", ".", tmp_path / "out")
        assert exported["output"] == str(tmp_path / "out")
        assert (tmp_path / "out" / "app.py").read_text() == "print('hello')\n"
        single = alice.export_workspace("loop", "app.py", tmp_path / "app.py")
        assert single["artifact_type"] == "file" and (tmp_path / "app.py").read_text().endswith(
            "'hello')\n"
        )
        with pytest.raises(InvalidArgument, match="exists"):
            alice.export_workspace("loop", "app.py", tmp_path / "app.py")
        alice.write_workspace_file("loop", "blob.bin", b"\x00\xff")
        assert alice.read_workspace_file("loop", "blob.bin")["content_base64"] == "AP8="
        alice.create_snapshot("loop", "patched")
        alice.reset_workspace("loop")
        assert alice.exec_workspace("loop", "cat app.py")["stdout"] == "print('hi')\n"
        alice.reset_workspace("loop", snapshot="patched")
        assert alice.exec_workspace("loop", "cat app.py")["stdout"] == "print('hello')\n"
        forks = alice.fork_workspace("loop", name="loop-fork")["forks"]
        assert [f["name"] for f in forks] == ["loop-fork"]
        assert alice.stop_workspace("loop")["state"] == "suspended"
        assert alice.start_workspace("loop")["state"] == "running"
        assert alice.exec_workspace("loop", "cat app.py")["stdout"] == "print('hello')\n"
        assert {w["name"] for w in alice.list_workspaces()["workspaces"]} == {"loop", "loop-fork"}
        alice.delete_workspace("loop-fork")
    finally:
        alice.delete_workspace(created["workspace_id"])


def test_another_principal_finds_nothing_of_a_workspace_it_does_not_own(
    server: RemoteServer, tmp_path: Path
) -> None:
    alice, bob = server.sdk("alice"), server.sdk("bob")
    owned = alice.create_workspace(name="private")
    ref = owned["workspace_id"]
    try:
        alice.create_snapshot(ref, "snap")
        assert bob.list_workspaces()["workspaces"] == []
        calls = {
            "status": lambda w: bob.status_workspace(w),
            "exec": lambda w: bob.exec_workspace(w, "true"),
            "logs": lambda w: bob.logs_workspace(w),
            "snapshots": lambda w: bob.list_snapshots(w),
            "reset to a snapshot": lambda w: bob.reset_workspace(w, snapshot="snap"),
            "export": lambda w: bob.export_workspace(w, ".", tmp_path / "stolen"),
            "fork": lambda w: bob.fork_workspace(w),
            "services": lambda w: bob.list_services(w),
            "delete": lambda w: bob.delete_workspace(w),
        }
        for what, call in calls.items():
            for guess in (ref, "private"):
                with pytest.raises(NotFound) as found:
                    call(guess)
                # The same answer as for an id that never existed.
                assert str(found.value) == f"no workspace {guess!r}; see `pyro workspace list`", (
                    what
                )
        assert not (tmp_path / "stolen").exists()
        assert alice.status_workspace(ref)["state"] == "running"
        # Names are each principal's own: bob's "private" is another workspace,
        # and nothing in the answer tells him alice has one.
        mine = bob.create_workspace(name="private")
        try:
            assert mine["name"] == "private" and mine["workspace_id"] != ref
            assert [w["name"] for w in bob.list_workspaces()["workspaces"]] == ["private"]
            assert bob.status_workspace("private")["workspace_id"] == mine["workspace_id"]
            assert alice.status_workspace("private")["workspace_id"] == ref
            with pytest.raises(InvalidArgument, match="a workspace called 'private' exists"):
                alice.create_workspace(name="private")
        finally:
            bob.delete_workspace(mine["workspace_id"])
    finally:
        alice.delete_workspace(ref)


def test_a_token_may_keep_only_its_limit_of_workspaces_running(server: RemoteServer) -> None:
    bob = server.sdk("bob")
    first = bob.create_workspace(name="one")
    try:
        with pytest.raises(QuotaExceeded, match=r"--max-running 1\).*one"):
            bob.create_workspace(name="two")
        assert [w["name"] for w in bob.list_workspaces()["workspaces"]] == ["one"]
    finally:
        bob.delete_workspace(first["workspace_id"])
    server.token("dora", "--max-disk-gib", "0.001")  # 1 MiB: one workspace's disks pass it
    dora = server.sdk("dora")
    made = dora.create_workspace(name="first")
    try:
        with pytest.raises(QuotaExceeded, match=r"--max-disk-gib 0.001"):
            dora.create_workspace(name="second")
    finally:
        dora.delete_workspace(made["workspace_id"])


def test_the_remote_cli_runs_without_qemu_or_posix_only_imports(
    server: RemoteServer, git_project: Path, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"  # only git: no QEMU, no pyro state on this side
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    assert shutil.which("qemu-system-x86_64", path=str(bin_dir)) is None
    home = tmp_path / "client-home"
    env = {
        "PATH": str(bin_dir),
        "HOME": str(home),
        "PYRO_HOME": str(home / "state"),
        "PYRO_CACHE_DIR": str(home / "cache"),
        "PYRO_REMOTE": server.url,
        "PYRO_TOKEN": server.tokens["alice"],
    }

    def pyro(*args: str) -> dict:
        # As a Windows laptop imports it: pyro's own POSIX-only imports fail.
        done = subprocess.run(
            [sys.executable, str(WINDOWS_LIKE), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if "--json" in args else {}

    created = pyro("workspace", "create", "--project-path", str(git_project), "--json")
    ref = created["workspace_id"]
    try:
        ran = pyro("workspace", "exec", ref, "--json", "--", "cat", "app.py")
        assert ran["stdout"] == "print('hi')\n"
        pyro("workspace", "export", ref, "app.py", "--output", str(tmp_path / "got.py"), "--json")
        assert (tmp_path / "got.py").read_text() == "print('hi')\n"
        listed = subprocess.run(
            pyro_command("--remote", server.url, "workspace", "list", "--json"),
            env={**env, "PYRO_REMOTE": ""},
            capture_output=True,
            text=True,
            check=True,
        )
        assert ref in listed.stdout
    finally:
        pyro("workspace", "delete", ref, "--json")
    assert not home.exists()  # a remote client keeps no local state


def test_a_seed_archive_that_climbs_out_is_refused_and_nothing_is_created(
    server: RemoteServer, tmp_path: Path
) -> None:
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../../escape")
    bob = server.sdk("bob")
    with pytest.raises(InvalidArgument, match="outside the workspace"):
        bob.create_workspace(seed_path=evil)
    assert bob.list_workspaces()["workspaces"] == []
    assert list((server.state_dir / "server-spool" / "uploads").iterdir()) == []


def test_the_remote_sdk_reads_secret_files_on_its_own_side(
    server: RemoteServer, tmp_path: Path
) -> None:
    secret = tmp_path / "token.txt"
    secret.write_text("s3cret-value")
    alice = server.sdk("alice")
    created = alice.create_workspace(secrets=[{"name": "TOKEN", "file_path": str(secret)}])
    try:
        ran = alice.exec_workspace(
            created["workspace_id"],
            'test "$T" = s3cret-value && echo same',
            secret_env={"T": "TOKEN"},
        )
        assert ran["stdout"] == "same\n"
    finally:
        alice.delete_workspace(created["workspace_id"])


def test_a_restarted_server_gives_owners_their_running_workspaces_back(
    server: RemoteServer,
) -> None:
    alice = server.sdk("alice")
    created = alice.create_workspace(name="survivor")
    try:
        alice.write_workspace_file("survivor", "kept.txt", "still here\n")
        server.stop()
        server.start()
        alice = server.sdk("alice")
        assert alice.status_workspace("survivor")["state"] == "running"
        assert alice.exec_workspace("survivor", "cat kept.txt")["stdout"] == "still here\n"
        with pytest.raises(NotFound):
            server.sdk("bob").status_workspace("survivor")
    finally:
        server.sdk("alice").delete_workspace(created["workspace_id"])


def test_principals_warm_guests_map_no_common_snapshot_file(server: RemoteServer) -> None:
    alice, bob = server.sdk("alice"), server.sdk("bob")
    for principal in (alice, bob):
        principal.prepare(network=False)
    a = alice.create_workspace(name="iso-a")
    b = bob.create_workspace(name="iso-b")
    try:
        assert a["boot_kind"] == b["boot_kind"] == "warm"
        mapped = {"alice": _mapped_files(server, a), "bob": _mapped_files(server, b)}
        for name, files in mapped.items():
            # Each guest's RAM is its own principal's snapshot (a hard link to it).
            own = server.cache_dir / "warm-principals" / name
            snapshots = {_inode(p) for p in own.rglob("ram.img")}
            assert files & snapshots, name
        assert mapped["alice"] & mapped["bob"] == set()
    finally:
        alice.delete_workspace(a["workspace_id"])
        bob.delete_workspace(b["workspace_id"])


def _inode(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def _mapped_files(server: RemoteServer, workspace: dict) -> set[tuple[int, int]]:
    """The files a workspace's QEMU maps, but the environment's boot files (the
    same public kernel and initrd for everyone, never guest memory)."""
    vm_dir = f"/vms/{workspace['vm_id']}/".encode()
    environments = str(server.cache_dir / "environments")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"qemu-system" not in cmdline.split(b"\0")[0] or vm_dir not in cmdline:
                continue
            lines = (entry / "maps").read_text().splitlines()
        except OSError:
            continue
        paths = {
            fields[5] for fields in (line.split(None, 5) for line in lines) if len(fields) == 6
        }
        return {
            _inode(Path(p))
            for p in paths
            if p.startswith("/")
            and not p.startswith(("/usr/", "/lib", environments))
            and Path(p).exists()
        }
    raise AssertionError(f"no QEMU process for {workspace['vm_id']}")


def test_port_forward_carries_a_published_port_to_the_clients_loopback(
    server: RemoteServer,
) -> None:
    alice = server.sdk("alice")
    ws = alice.create_workspace(network_policy="egress+published-ports")["workspace_id"]
    forwarder = None
    try:
        alice.write_workspace_file(ws, "app/index.html", "hello through the tunnel\n")
        alice.start_service(
            ws,
            "web",
            "python3 -m http.server 8000",
            cwd="app",
            ready_http="http://127.0.0.1:8000/",
            published_ports=["8000"],
        )
        env = {**server.env, "PYRO_REMOTE": server.url}
        forwarder = subprocess.Popen(
            pyro_command("workspace", "port-forward", ws, "8000", "--json"),
            env={**env, "PYRO_TOKEN": server.tokens["alice"]},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert forwarder.stdout is not None
        ready = json.loads(forwarder.stdout.readline())
        for _ in range(2):  # each request is a connection of its own
            body = urllib.request.urlopen(ready["url"] + "/index.html", timeout=30).read()
            assert body == b"hello through the tunnel\n"
        refused = subprocess.run(
            pyro_command("workspace", "port-forward", ws, "8000"),
            env={**env, "PYRO_TOKEN": server.tokens["bob"]},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1 and f"no workspace {ws!r}" in refused.stderr
    finally:
        if forwarder is not None:
            forwarder.terminate()
            forwarder.wait(timeout=30)
            for stream in (forwarder.stdout, forwarder.stderr):
                if stream is not None:
                    stream.close()
        alice.delete_workspace(ws)


def test_a_remote_build_sends_its_context_and_the_environment_runs_there(
    server: RemoteServer, tmp_path: Path
) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "note.txt").write_text("from the laptop\n")
    (context / "Dockerfile").write_text(
        "FROM debian:12\nCOPY note.txt /note.txt\nRUN cat /note.txt > /copied\n"
    )
    alice = server.sdk("alice")
    outside = tmp_path / "Dockerfile.elsewhere"
    outside.write_text("FROM debian:12\n")
    with pytest.raises(InvalidArgument, match="outside the context"):
        alice.build_environment("remote-built:1", file=outside, context=context)
    try:
        built = alice.build_environment("remote-built:1", context=context)
        assert built["name"] == "remote-built:1"
        ran = alice.run_in_vm("remote-built:1", "cat /copied")
        assert ran["stdout"] == "from the laptop\n", ran
    finally:  # the shared cache keeps only what every test uses
        shutil.rmtree(server.cache_dir / "environments" / "remote-built-1", ignore_errors=True)
    spool = server.state_dir / "server-spool"
    assert not list(spool.glob("unpacked-*")) and not list(spool.glob("uploads/*"))


def test_a_remote_disk_export_sends_only_the_disks_data(
    server: RemoteServer, tmp_path: Path
) -> None:
    alice = server.sdk("alice")
    ws = alice.create_workspace()["workspace_id"]
    try:
        alice.write_workspace_file(ws, "src/app.py", "print('hi')\n")
        alice.stop_workspace(ws)
        image = tmp_path / "ws.ext4"
        exported = alice.export_workspace_disk(ws, image)
        assert Path(exported["output_path"]) == image
        assert exported["disk_format"] == "raw ext4"
        size = image.stat().st_size
        assert exported["bytes_written"] == size
        assert image.stat().st_blocks * 512 < size / 4  # written sparse
        checked = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout
        dumped = subprocess.run(
            ["debugfs", "-R", "cat /src/app.py", str(image)], capture_output=True, text=True
        )
        assert dumped.stdout == "print('hi')\n"

        # What crossed: the data extents, not the image's full length.
        headers = {
            "Authorization": f"Bearer {server.tokens['alice']}",
            wire.VERSION_HEADER: __version__,
        }
        called = httpx2.post(
            server.url + wire.API + "/call/export_workspace_disk",
            json={"arguments": {"workspace": ws, "output_path": {"download": True}}},
            headers=headers,
            timeout=300,
            trust_env=False,
        )
        ticket = json.loads(called.text.strip().splitlines()[-1])["result"]["download"]
        with httpx2.stream(
            "GET",
            server.url + wire.API + f"/downloads/{ticket}?layout=extents",
            headers=headers,
            trust_env=False,
        ) as response:
            assert int(response.headers[wire.DISK_SIZE_HEADER]) == size
            assert int(response.headers["Content-Length"]) < size / 4
    finally:
        alice.delete_workspace(ws)


def test_prepare_project_sends_the_project_and_answers_in_its_paths(
    server: RemoteServer, git_project: Path
) -> None:
    devcontainer = git_project / ".devcontainer"
    devcontainer.mkdir()
    (devcontainer / "devcontainer.json").write_text(
        '{"build": {"dockerfile": "Dockerfile", "context": ".."}}'
    )
    (devcontainer / "Dockerfile").write_text(
        "FROM debian:12\nCOPY app.py /opt/app.py\nRUN touch /opt/prepared\n"
    )
    alice = server.sdk("alice")
    try:
        prepared = alice.prepare_project(git_project, network=False)
        assert prepared["project"] == str(git_project)
        assert prepared["devcontainer"] == str(devcontainer / "devcontainer.json")
        name = prepared["environment"]
        assert name.startswith("project:devcontainer-"), name
        ran = alice.run_in_vm(name, "cat /opt/app.py; ls /opt/prepared")
        assert ran["stdout"] == "print('hi')\n/opt/prepared\n", ran
    finally:  # the shared cache keeps only what every test uses
        for made in (server.cache_dir / "environments").glob("project-devcontainer-*"):
            shutil.rmtree(made, ignore_errors=True)
    spool = server.state_dir / "server-spool"
    assert not list(spool.glob("unpacked-*")) and not list(spool.glob("uploads/*"))


def test_a_stopped_server_leaves_no_warm_up_guest_behind(
    server: RemoteServer, tmp_path: Path, cache_dir: Path
) -> None:
    """A principal's first call starts its warm-up (a template guest booting);
    the server stopped then takes that guest down within seconds."""
    # A cache of its own over the installed debian:12 (its own environment lock:
    # other tests may hold the shared one for minutes while they push or pull).
    cache = tmp_path / "cache"
    shared = cache_dir / "environments" / "debian-12"
    (cache / "environments" / "debian-12").mkdir(parents=True)
    for item in ("builds", "current"):
        (cache / "environments" / "debian-12" / item).symlink_to(shared / item)
    for folder in ("kernels", "runtime"):
        if (cache_dir / folder).is_dir():
            (cache / folder).symlink_to(cache_dir / folder)
    name = f"brief-{uuid.uuid4().hex[:8]}"
    warm_dir = cache / "warm-principals" / name
    with serving(tmp_path, cache, {name: []}, server.base_env) as remote:
        remote.sdk(name).list_workspaces()
        deadline = time.monotonic() + 300
        while not leaked_processes(warm_dir) and time.monotonic() < deadline:
            log = remote.log.read_text(errors="replace")
            assert "could not prepare" not in log and "Traceback" not in log, log[-2000:]
            time.sleep(0.2)
        assert leaked_processes(warm_dir), remote.log.read_text(errors="replace")[-2000:]
    deadline = time.monotonic() + 15
    while leaked_processes(warm_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leaked_processes(warm_dir) == []
    assert not list(warm_dir.rglob("template"))
