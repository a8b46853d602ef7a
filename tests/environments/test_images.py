"""Environments from OCI images, made in the tests with umoci and skopeo, against
real guests and a real registry on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import tomlkit

import pyro_mcp
from pyro_mcp import InvalidArgument, Pyro
from pyro_mcp.environments import builder, images, runtime
from pyro_mcp.errors import NotFound
from tests.cli_helper import pyro_cli
from tests.conftest import leaked_processes
from tests.environments import images_helper
from tests.mcp.conftest import call, mcp_client

pytestmark = pytest.mark.vm
NET_RAW = images_helper.NET_RAW_CAPABILITY


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A cache of its own for pulled images (so `env list` elsewhere stays the
    catalog), sharing the kernel downloads and the runtime drive."""
    private = tmp_path_factory.mktemp("image-cache")
    for shared in ("kernels", "runtime", "warm-builder"):
        (cache_dir / shared).mkdir(parents=True, exist_ok=True)
        (private / shared).symlink_to(cache_dir / shared)
    return private


@pytest.fixture
def lines() -> list[str]:
    return []


@pytest.fixture
def sdk(tmp_path: Path, image_cache: Path, lines: list[str]) -> Iterator[Pyro]:
    state = tmp_path / "state"
    client = Pyro(state_dir=state, cache_dir=image_cache, progress=lines.append)
    yield client
    for workspace in client.list_workspaces()["workspaces"]:
        client.delete_workspace(workspace["workspace_id"])
    for record in client.list_vms():
        client.delete_vm(record["vm_id"])
    assert leaked_processes(state) == []


def test_a_busybox_only_image_runs_as_its_user_with_its_env(
    sdk: Pyro, tmp_path: Path, image_cache: Path, lines: list[str]
) -> None:
    reference = images_helper.busybox_image(tmp_path / "layout")
    env = dict(os.environ, PYRO_HOME=str(tmp_path / "state"), PYRO_CACHE_DIR=str(image_cache))
    done = pyro_cli(env, "env", "pull", reference, "--name", "bb:1", "--json")
    pulled = json.loads(done.stdout)
    assert pulled["name"] == "bb:1" and pulled["kind"] == "image" and pulled["installed"]
    # Prepared on the way: warm snapshots without and with a NIC, said last.
    assert [s["network"] for s in pulled["prepare"]["snapshots"]] == [False, True]
    assert done.stderr.startswith("[pull] phase=install environment=bb:1")
    assert "[pull] phase=ready bb:1 is installed and warm" in done.stderr.splitlines()[-1]
    assert pulled["source"] == reference and pulled["digest"].startswith("sha256:")
    settings = pulled["image"]["settings"]
    assert settings["user"] == "app" and settings["cmd"] == ["/bin/sh"]

    ran = sdk.run_in_vm("bb:1", "id -u; pwd; echo $GREETING; echo $PATH", timeout_seconds=60)
    assert ran["exit_code"] == 0, ran
    assert ran["stdout"].splitlines() == ["1000", "/home/app", "hello from the image", "/bin"]

    listing = json.loads(pyro_cli(env, "env", "list", "--json").stdout)
    mine = next(e for e in listing if e["name"] == "bb:1")
    assert mine["kind"] == "image" and mine["source"] == reference
    shown = pyro_cli(env, "env", "inspect", "bb:1").stdout
    assert "entrypoint" in shown and "(not run)" in shown and "GREETING=" in shown

    # A workspace from it: warm from the first one, /workspace belongs to the image's user.
    made = sdk.create_workspace(environment="bb:1")
    assert made["boot_kind"] == "warm", made
    ws = made["workspace_id"]
    done = sdk.exec_workspace(ws, "id -u; pwd; echo made > made.txt; stat -c %u made.txt")
    assert done["stdout"].splitlines() == ["1000", "/workspace", "1000"], done
    assert [c["path"] for c in sdk.diff_workspace(ws)["changes"]] == ["made.txt"]
    sdk.reset_workspace(ws)
    assert sdk.exec_workspace(ws, "ls")["stdout"].split() == ["lost+found"]

    # A service, a shell (sh: the image has no bash) and a fork: the image's user and Env.
    loop = "id -u > svc-uid; echo $GREETING > svc-env; while true; do sleep 1; done"
    sdk.start_service(ws, "loop", loop, ready_file="svc-env")
    seen = sdk.exec_workspace(ws, "cat svc-uid svc-env")["stdout"].splitlines()
    assert seen == ["1000", "hello from the image"]
    sh = sdk.open_shell(ws)["shell_id"]
    sdk.write_shell(ws, sh, "echo shell-$(id -u)-$GREETING")
    deadline, output = time.monotonic() + 30, ""
    while "shell-1000-hello from the image" not in output and time.monotonic() < deadline:
        output = sdk.read_shell(ws, sh, cursor=0, plain=True, wait_for_idle_ms=500)["output"]
    assert "shell-1000-hello from the image" in output, output
    fork = sdk.fork_workspace(ws)["forks"][0]["workspace_id"]
    assert sdk.exec_workspace(fork, "id -u; cat svc-env")["stdout"].splitlines() == seen
    sdk.delete_workspace(fork)
    sdk.delete_workspace(ws)

    # From chat: a server whose default environment is the pulled one.
    async def chat() -> None:
        async with mcp_client(
            env, "--profile", "workspace-full", "--environment", "bb:1", "--no-project-source"
        ) as client:
            listed = await call(client, "vm_list_environments")
            mine = next(e for e in listed["environments"] if e["name"] == "bb:1")
            assert mine["kind"] == "image" and mine["source"] == reference
            made = await call(client, "workspace_create")
            assert made["environment"] == "bb:1"
            ran = await call(
                client, "workspace_exec", workspace_id=made["workspace_id"], command="id -un"
            )
            assert ran["stdout"] == "app\n"
            await call(client, "workspace_delete", workspace_id=made["workspace_id"])

    anyio.run(chat)

    # `env rm`: refused, naming the workspace, while one uses it (which runs on);
    # with --force the workspace goes first, then the builds, snapshots and layers.
    ws = sdk.create_workspace(environment="bb:1")["workspace_id"]
    refused = pyro_cli(env, "env", "rm", "bb:1")
    assert refused.returncode == 1 and ws in refused.stderr and "--force" in refused.stderr
    assert sdk.exec_workspace(ws, "echo still")["stdout"] == "still\n"
    chain = [Path(layer["disk"]) for layer in sdk.inspect_environment("bb:1")["layer_disks"]]
    removed = pyro_cli(env, "env", "rm", "bb:1", "--force", "--json")
    assert removed.returncode == 0, removed.stderr
    result = json.loads(removed.stdout)["environments"][0]
    assert result["deleted_workspaces"] == [ws] and result["freed_bytes"] > 0
    assert f"deleting workspace {ws}" in removed.stderr
    assert sdk.list_workspaces()["count"] == 0
    assert not (image_cache / "warm" / "bb-1").exists()
    assert not (image_cache / "environments" / "bb-1").exists()
    assert not any(disk.exists() for disk in chain)
    again = pyro_cli(env, "env", "rm", "bb:1")
    assert again.returncode == 1 and "unknown environment 'bb:1'" in again.stderr
    assert leaked_processes(tmp_path / "state") == []


def test_layers_delete_replace_and_keep_owners_links_setuid_and_capabilities(
    sdk: Pyro, tmp_path: Path, image_cache: Path, lines: list[str]
) -> None:
    layout = tmp_path / "layout"
    images_helper.busybox_image(layout, "base")
    sdk.pull_environment(f"oci:{layout}:base", name="base:1")
    lines.clear()
    installed = sdk.pull_environment(images_helper.layered_image(layout, "base"), name="layered:1")
    # The busybox layer is the same blob as base:1's: its disk is shared, only the
    # two new layers were applied.
    assert any("1 of 3 layers already on disk, shared" in line for line in lines), lines
    chain = installed["manifest"]["chain"]
    base_chain = sdk.inspect_environment("base:1")["manifest"]["chain"]
    assert chain[: len(base_chain)] == base_chain and len(chain) == len(base_chain) + 2

    # A sibling: the same first two layers, another third. Neither image holds
    # the other, yet the two lower layer disks are shared (a disk per layer).
    images_helper.umoci("tag", "--image", f"{layout}:base", "sibling")
    images_helper.add_layer(layout, "sibling", images_helper.first_layer())
    images_helper.add_layer(layout, "sibling", [(images_helper.entry("opt/other"), b"other\n")])
    lines.clear()
    sibling = sdk.pull_environment(f"oci:{layout}:sibling", name="sibling:1")
    assert any("2 of 3 layers already on disk, shared" in line for line in lines), lines
    assert sibling["manifest"]["chain"][:2] == chain[:2]
    listed = {e["name"]: e for e in sdk.list_environments()}
    assert listed["sibling:1"]["shared_layers"] == 2
    assert listed["sibling:1"]["shared_with"] == ["base:1", "layered:1"]
    assert listed["layered:1"]["layer_disks"][2]["shared_with"] == []
    assert listed["base:1"]["layer_disks"][0]["shared_with"] == ["layered:1", "sibling:1"]
    env = dict(os.environ, PYRO_HOME=str(tmp_path / "state"), PYRO_CACHE_DIR=str(image_cache))
    table = pyro_cli(env, "env", "list").stdout
    assert "SHARED" in table and "with base:1, layered:1" in table, table
    shown = pyro_cli(env, "env", "inspect", "sibling:1").stdout
    assert "shared with base:1, layered:1" in shown, shown

    script = (
        "cat /opt/keep.txt /opt/hard /opt/becomes_file; ls /etc/opaque; ls /opt; "
        "readlink /opt/passwd; stat -c '%a %u' /bin/suid /home/app/mine.txt; "
        "stat -c %h /opt/keep.txt"
    )
    ran = sdk.run_in_vm("layered:1", script, timeout_seconds=60)
    assert ran["exit_code"] == 0, ran
    assert ran["stdout"].splitlines() == [
        "keep",
        "keep",
        "now a file",
        "upper.txt",
        "becomes_file",
        "hard",
        "keep.txt",
        "passwd",
        "/etc/passwd",
        "4755 0",
        "644 1000",
        "2",
    ]
    # The capability, read offline from the top layer disk.
    raw = tmp_path / "top.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", chain[-1], raw], check=True)
    found = subprocess.run(
        ["debugfs", "-R", "ea_list /bin/cap", raw], capture_output=True, text=True, check=True
    )
    assert "security.capability" in found.stdout, found.stdout


def _one_layer_image(layout: Path, tag: str, members: list[Any]) -> str:
    """An image whose only layer is ``members`` (the host unpacks it, as root)."""
    images_helper.umoci("init", "--layout", layout)
    images_helper.umoci("new", "--image", f"{layout}:{tag}")
    images_helper.add_layer(layout, tag, members)
    images_helper.umoci("config", "--image", f"{layout}:{tag}", "--config.env", "PATH=/bin")
    return f"oci:{layout}:{tag}"


def test_a_first_layer_unpacked_on_the_host_keeps_owners_links_devices_and_capabilities(
    sdk: Pyro, tmp_path: Path, lines: list[str]
) -> None:
    entry, kind = images_helper.entry, tarfile
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    null = entry("opt/null", kind.CHRTYPE, mode=0o666)
    null.devmajor, null.devminor = 1, 3
    members = [
        (entry("bin", kind.DIRTYPE, mode=0o755), b""),
        (entry("bin/busybox", mode=0o755), busybox),
        *[
            (entry(f"bin/{applet}", kind.SYMTYPE, link="busybox"), b"")
            for applet in images_helper.BUSYBOX_APPLETS
        ],
        (entry("etc", kind.DIRTYPE, mode=0o755), b""),
        (entry("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n"),
        (entry("opt", kind.DIRTYPE, mode=0o755), b""),
        (entry("opt/keep.txt"), b"keep\n"),
        (entry("opt/hard", kind.LNKTYPE, link="opt/keep.txt"), b""),
        (entry("opt/passwd", kind.SYMTYPE, link="/etc/passwd"), b""),
        (entry("opt/fifo", kind.FIFOTYPE), b""),
        (null, b""),
        (entry("bin/suid", mode=0o4755), b"#!/bin/sh\necho suid\n"),
        (
            entry("bin/cap", mode=0o755, xattrs={"security.capability": NET_RAW}),
            b"#!/bin/sh\necho cap\n",
        ),
        (entry("home", kind.DIRTYPE, mode=0o755), b""),
        (entry("home/app", kind.DIRTYPE, mode=0o750, uid=1000), b""),
        (entry("home/app/mine.txt", uid=1000), b"mine\n"),
    ]
    reference = _one_layer_image(tmp_path / "layout", "one", members)
    installed = sdk.pull_environment(reference, name="one:1")
    assert any("phase=layers unpacking 1/1" in line and "on the host" in line for line in lines)
    assert not any("starting a guest" in line for line in lines), lines  # no guest at all
    script = (
        "cat /opt/keep.txt /opt/hard; readlink /opt/passwd; stat -c %h /opt/keep.txt; "
        "stat -c '%a %u' /bin/suid /home/app /home/app/mine.txt; "
        "stat -c '%F %t %T' /opt/fifo /opt/null"
    )
    ran = sdk.run_in_vm("one:1", script, timeout_seconds=120)
    assert ran["exit_code"] == 0, ran
    assert ran["stdout"].splitlines() == [
        "keep",
        "keep",
        "/etc/passwd",
        "2",
        "4755 0",
        "750 1000",
        "644 1000",
        "fifo 0 0",
        "character special file 1 3",
    ]
    raw = tmp_path / "one.raw"
    disk = installed["manifest"]["chain"][0]
    subprocess.run(["qemu-img", "convert", "-O", "raw", disk, raw], check=True)
    found = subprocess.run(
        ["debugfs", "-R", "ea_list /bin/cap", raw], capture_output=True, text=True, check=True
    )
    assert "security.capability" in found.stdout, found.stdout


def test_a_first_layer_cannot_write_through_its_own_links_onto_the_host(
    sdk: Pyro, tmp_path: Path, image_cache: Path, lines: list[str]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    entry, link = images_helper.entry, tarfile.SYMTYPE
    members = [
        (entry("escape", link, link=str(outside)), b""),
        (entry("escape/pwned"), b"pwned\n"),
        (entry("up", link, link="../" * 12 + str(outside).lstrip("/")), b""),
        (entry("up/pwned"), b"pwned\n"),
    ]
    reference = _one_layer_image(tmp_path / "layout", "evil", members)
    with pytest.raises(images.ImageError, match="Not a directory"):
        sdk.pull_environment(reference, name="evil:1")
    # The host's tar refused it, then the guest's did too; nothing reached the host.
    assert any("tar on the host failed" in line for line in lines), lines
    assert list(outside.iterdir()) == []
    with pytest.raises(NotFound):
        sdk.inspect_environment("evil:1")
    layers = image_cache / "layers"
    assert not list(layers.glob("*/.unpacked-*"))
    assert all(d.with_suffix(".json").exists() for d in layers.glob("*/*.qcow2"))


def test_a_registry_image_pulls_over_loopback_and_faults_are_clear(
    sdk: Pyro, tmp_path: Path, lines: list[str]
) -> None:
    reference = images_helper.busybox_image(tmp_path / "layout")
    archive = tmp_path / "saved.tar"
    images_helper.push(reference, f"docker-archive:{archive}:team/bb:7")
    with images_helper.loopback_registry(tmp_path) as registry:
        images_helper.push(reference, f"docker://{registry}/team/bb:7")
        info = sdk.pull_environment(f"{registry}/team/bb:7")
        assert info["name"] == "bb:7" and info["installed"]
        # Each layer is reported once whole, with its size.
        done = [line for line in lines if line.startswith("phase=fetch layer ")]
        assert len(done) == 1 and done[0].endswith(" MiB done"), lines
        assert done[0].startswith("phase=fetch layer 1/1 sha256:"), done
        # The same layers again (from a docker save archive): nothing new to fetch or apply.
        lines.clear()
        again = sdk.pull_environment(f"docker-archive:{archive}", name="saved:1")
        assert again["installed"] and any("already on disk" in line for line in lines)
        assert again["manifest"]["chain"] == info["manifest"]["chain"]

        with pytest.raises(images.ImageError, match="was not found"):
            sdk.pull_environment(f"{registry}/team/bb:missing")
    started = time.monotonic()
    with pytest.raises(images.ImageError, match="cannot reach"):
        sdk.pull_environment(f"127.0.0.1:{images_helper.free_port()}/team/bb:7")
    assert time.monotonic() - started < 30
    with pytest.raises(NotFound, match=r"pulled from images: .*bb:7, .*saved:1") as missing:
        sdk.create_workspace(environment="nothing:1")
    assert "pyro env pull REF --name" in str(missing.value)
    ran = sdk.run_in_vm("bb:7", "id -un", timeout_seconds=60)
    assert ran["stdout"] == "app\n"

    # Prune keeps what installed environments use, and frees it once none does.
    chain = [Path(p) for p in info["manifest"]["chain"]]
    killed = chain[-1].parent / ".unpacked-left-by-a-killed-pull"  # what kill -9 leaves
    killed.mkdir()
    (killed / "layer.tar").write_bytes(b"x" * 4096)
    sdk.prune_environments()
    assert all(path.is_file() for path in chain) and not killed.exists()
    assert sdk.run_in_vm("saved:1", "true", timeout_seconds=60)["exit_code"] == 0
    removed = sdk.prune_environments(all=True)["removed"]
    assert not any(path.exists() for path in chain)
    assert any("/oci/blobs/" in path for path in removed)


def test_a_corrupted_blob_is_refused_and_fetched_again(
    sdk: Pyro, tmp_path: Path, image_cache: Path
) -> None:
    layout = tmp_path / "layout"
    reference = images_helper.busybox_image(layout, "corrupt")
    manifest = json.loads((layout / "index.json").read_text())["manifests"][-1]["digest"]
    blobs = layout / "blobs" / "sha256"
    layer = json.loads((blobs / manifest.removeprefix("sha256:")).read_text())["layers"][0]
    blob = blobs / layer["digest"].removeprefix("sha256:")
    good = blob.read_bytes()
    blob.write_bytes(good[:-10] + b"0123456789")  # same size, other bytes
    with pytest.raises(images.ImageError):
        sdk.pull_environment(reference, name="corrupt:1")
    with pytest.raises(NotFound):
        sdk.inspect_environment("corrupt:1")
    blob.write_bytes(good)
    assert sdk.pull_environment(reference, name="corrupt:1")["installed"]


def test_references_and_names_are_checked() -> None:
    parse = images.parse_reference
    assert parse("registry.example.org/team/node:22").default_name == "node:22"
    assert parse("docker://registry.example.org/node:22").source == (
        "docker://registry.example.org/node:22"
    )
    digest = "sha256:" + "ab" * 32
    assert parse(f"registry.example.org/node@{digest}").default_name == "node:sha-abababababab"
    assert parse("127.0.0.1:5000/app").registry == "127.0.0.1:5000"
    for bad in ("", "team/node:22", "node", "a b"):
        with pytest.raises(InvalidArgument, match="reference"):
            parse(bad)
    with pytest.raises(InvalidArgument, match="does not exist"):
        parse("oci-archive:/nonexistent/file.tar")
    with pytest.raises(InvalidArgument, match="name"):
        images.check_name("Bad Name")


def _cache_with(tmp: Path, shared: Path, *environments: str, share_oci: bool = False) -> Path:
    """A cache of its own that sees these installed environments, the kernels
    and the runtime drive of the shared one; with ``share_oci`` also its blob
    store (and its lock), so a curated environment is packed as an image once
    per run, not once per test that pushes it."""
    private = tmp
    (private / "environments").mkdir(parents=True)
    for name in ("kernels", "runtime", "warm-builder"):
        (shared / name).mkdir(parents=True, exist_ok=True)
        (private / name).symlink_to(shared / name)
    if share_oci:
        (shared / "oci").mkdir(parents=True, exist_ok=True)
        (shared / "oci.lock").touch()
        (shared / "oci.users").touch()
        for name in ("oci", "oci.lock", "oci.users"):
            (private / name).symlink_to(shared / name)
    for slug in environments:
        (private / "environments" / slug).symlink_to(shared / "environments" / slug)
    return private


def test_a_curated_environment_pushed_and_pulled_back_keeps_its_digest(
    tmp_path: Path,
    cache_dir: Path,
    warm_environment: dict[str, Any],
    lines: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    here = Pyro(
        state_dir=tmp_path / "state",
        cache_dir=_cache_with(tmp_path / "cache", cache_dir, "debian-12", share_oci=True),
        progress=lines.append,
    )
    elsewhere_state = tmp_path / "elsewhere-state"
    elsewhere = Pyro(
        state_dir=elsewhere_state,
        cache_dir=_cache_with(tmp_path / "elsewhere", cache_dir),
        progress=lines.append,
    )
    try:
        with images_helper.loopback_registry(tmp_path) as registry:
            pushed = here.push_environment("debian:12", f"{registry}/pyro/debian:12")
            assert pushed["manifest_digest"].startswith("sha256:")
            # Pushing again packs nothing and gives the same digest.
            again = here.push_environment("debian:12", f"oci:{tmp_path / 'layout'}:debian")
            assert again["manifest_digest"] == pushed["manifest_digest"]

            # Another machine names the registry: the curated name comes from it.
            monkeypatch.setenv("PYRO_ENVIRONMENT_REGISTRY", f"{registry}/pyro")
            lines.clear()
            info = elsewhere.pull_environment("debian:12")
            assert info["kind"] == "curated" and info["installed"]
            assert info["digest"] == pushed["manifest_digest"]
            assert any("pulled from" in line and "not built" in line for line in lines), lines
        elsewhere.prepare("debian:12", network=False)
        ws = elsewhere.create_workspace(environment="debian:12")["workspace_id"]
        done = elsewhere.exec_workspace(ws, "git --version && id -u && python3 -c 'print(1)'")
        assert done["exit_code"] == 0 and done["stdout"].splitlines()[1:] == ["0", "1"], done
        assert sdk_boot_kind(elsewhere, ws) == "warm"
    finally:
        for workspace in elsewhere.list_workspaces()["workspaces"]:
            elsewhere.delete_workspace(workspace["workspace_id"])
    assert leaked_processes(elsewhere_state) == []
    assert leaked_processes(tmp_path / "state") == []


def sdk_boot_kind(pyro: Pyro, ws: str) -> str:
    return str(pyro.status_workspace(ws).get("boot_kind"))


def test_pull_and_run_work_as_a_user_without_root(
    cache_dir: Path, warm_environment: dict[str, Any]
) -> None:
    """As ``nobody``, with Debian's own python3 and a copy of pyro and its
    dependencies: an image is pulled and runs; nothing needs root."""
    # What a first pull fetches once (the kernel, the runtime drive) is copied
    # from the shared cache, which nobody may not be able to reach.
    runtime.ensure_runtime(cache_dir, lambda _: None)
    builder.fetch_kernel(cache_dir / "kernels", lambda _: None)
    with tempfile.TemporaryDirectory(prefix="pyro-nobody-") as tmp:
        world = Path(tmp)
        reference = images_helper.busybox_image(world / "layout")
        code = world / "code"
        shutil.copytree(Path(tomlkit.__file__).parent.parent, code, symlinks=True)
        shutil.copytree(Path(pyro_mcp.__file__).parent, code / "pyro_mcp", dirs_exist_ok=True)
        cache = world / "cache"
        for shared in ("kernels", "runtime"):
            shutil.copytree(cache_dir / shared, cache / shared, symlinks=True)
        (world / "state").mkdir()
        subprocess.run(["chmod", "-R", "a+rX", world], check=True)
        subprocess.run(["chown", "-R", "nobody:nogroup", cache, world / "state"], check=True)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(world / "state"),
            "PYTHONPATH": str(code),
            "PYRO_HOME": str(world / "state"),
            "PYRO_CACHE_DIR": str(cache),
            # Its building guest boots: a warm one would be a copy of root's.
            "PYRO_WARM": "0",
        }

        def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
            command = ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-m"]
            return subprocess.run(
                [*command, "pyro_mcp.cli.main", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )

        pulled = as_nobody("env", "pull", reference, "--name", "bb:1", "--no-prepare", "--json")
        assert pulled.returncode == 0, pulled.stderr[-3000:]
        assert json.loads(pulled.stdout)["installed"] is True
        ran = as_nobody("run", "bb:1", "--", "id", "-u")
        assert ran.returncode == 0 and ran.stdout == "1000\n", ran.stderr[-3000:]
        assert leaked_processes(world / "state") == []


def test_images_that_cannot_be_installed_are_refused_before_any_guest(
    sdk: Pyro, tmp_path: Path, image_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = tmp_path / "layout"
    images_helper.busybox_image(layout, "arm")
    images_helper.umoci("config", "--image", f"{layout}:arm", "--architecture", "arm64")
    with pytest.raises(images.ImageError, match="linux/arm64"):
        sdk.pull_environment(f"oci:{layout}:arm", name="arm:1")

    images_helper.busybox_image(layout, "arm64-free")
    images_helper.busybox_image(layout, "climb")
    images_helper.add_layer(layout, "climb", [(images_helper.entry("../../etc/evil"), b"x")])
    with pytest.raises(images.ImageError, match="climbs out of the image root"):
        sdk.pull_environment(f"oci:{layout}:climb", name="climb:1")

    images_helper.busybox_image(layout, "big")
    zeros = b"\0" * (300 * 2**20)  # 300 MiB unpacked, a few hundred KB compressed
    images_helper.add_layer(layout, "big", [(images_helper.entry("opt/zeros"), zeros)])
    with pytest.raises(images.ImageError, match="--disk-size-mib"):
        sdk.pull_environment(f"oci:{layout}:big", name="big:1", disk_size_mib=256)

    with images_helper.loopback_registry(tmp_path, password="s3cret-pass") as registry:
        with pytest.raises(images.ImageError, match=r"auth\.json") as refused:
            sdk.pull_environment(f"{registry}/team/private:1")
        assert "s3cret-pass" not in str(refused.value)
        auth = tmp_path / "auth.json"
        token = base64.b64encode(b"pyro:s3cret-pass").decode()
        auth.write_text(json.dumps({"auths": {registry: {"auth": token}}}))
        images_helper.push(
            f"oci:{layout}:arm64-free", f"docker://{registry}/team/private:1", auth_file=auth
        )
        # The credentials where the container tools keep them: the pull gets in.
        runtime_dir = tmp_path / "run"
        (runtime_dir / "containers").mkdir(parents=True)
        auth.rename(runtime_dir / "containers" / "auth.json")
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
        info = sdk.pull_environment(f"{registry}/team/private:1")
        assert info["installed"] and "s3cret" not in json.dumps(info)
        assert token not in json.dumps(info)
    # Plain HTTP off loopback: refused unless the flag names it.
    address = images_helper.outward_address()
    with images_helper.loopback_registry(tmp_path, address=address) as registry:
        images_helper.push(f"oci:{layout}:arm64-free", f"docker://{registry}/team/plain:1")
        with pytest.raises(images.ImageError, match="--insecure-registry"):
            sdk.pull_environment(f"{registry}/team/plain:1")
        assert sdk.pull_environment(f"{registry}/team/plain:1", insecure_registry=True)["installed"]
    for name in ("arm:1", "climb:1", "big:1"):
        with pytest.raises(NotFound):
            sdk.inspect_environment(name)
    assert not [
        d for d in (image_cache / "layers").rglob("*.qcow2") if not d.with_suffix(".json").exists()
    ]


def test_byte_counts_are_a_live_line_on_a_terminal_and_sparse_lines_elsewhere(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyro_mcp.cli.render import progress_printer

    plain = progress_printer("env")
    for message in ("phase=fetch 1.0 of 9.0 MiB", "phase=fetch 2.0 of 9.0 MiB", "phase=done"):
        plain(message)
    assert capsys.readouterr().err.splitlines() == [
        "[env] phase=fetch 1.0 of 9.0 MiB",
        "[env] phase=done",
    ]
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    live = progress_printer("env")
    for message in ("phase=fetch 1.0 of 9.0 MiB", "phase=fetch 2.0 of 9.0 MiB", "phase=done"):
        live(message)
    err = capsys.readouterr().err
    assert err.count("\r[env] phase=fetch") == 2 and err.endswith("\n[env] phase=done\n")


NODE_PROJECT = {
    "package.json": json.dumps(
        {
            "name": "pyro-node-demo",
            "version": "1.0.0",
            "private": True,
            "scripts": {"test": "uvu test"},
            "dependencies": {"ms": "2.1.3"},
            "devDependencies": {"uvu": "0.5.6"},
        }
    ),
    "index.js": "const ms = require('ms');\nexports.wait = (text) => ms(text) / 1000;\n",
    "test/wait.test.js": (
        "const { test } = require('uvu');\nconst assert = require('uvu/assert');\n"
        "const { wait } = require('../index.js');\n"
        "test('two days in seconds', () => { assert.is(wait('2 days'), 172800); });\n"
        "test('a minute', () => { assert.is(wait('1m'), 60); });\ntest.run();\n"
    ),
}


def test_a_node_toolchain_image_runs_a_real_npm_project_as_its_user(
    tmp_path: Path, cache_dir: Path, warm_environment: dict[str, Any], lines: list[str]
) -> None:
    """Debian 12 (the curated one, pushed) plus a layer with Debian's nodejs and
    npm and a user ``node``: a workspace installs a project's dependencies from
    the registry this host uses and runs its tests as ``node``, with a secret,
    across a suspend and resume."""
    state = tmp_path / "state"
    pyro = Pyro(
        state_dir=state,
        cache_dir=_cache_with(tmp_path / "cache", cache_dir, "debian-12", share_oci=True),
        progress=lines.append,
    )
    layout = tmp_path / "layout"
    pyro.push_environment("debian:12", f"oci:{layout}:debian")
    rootfs = Path(pyro.inspect_environment("debian:12")["path"]) / "rootfs.ext4"
    reference = images_helper.node_image(
        layout, "debian", rootfs, cache_dir / "tests" / "node-debs"
    )
    try:
        info = pyro.pull_environment(reference, name="node:18")
        assert info["image"]["settings"]["user"] == "node"
        ws = pyro.create_workspace(
            environment="node:18",
            network=True,
            allow_package_index=True,
            secrets={"NPM_TOKEN": "tok-node-secret-1"},
        )["workspace_id"]
        for path, text in NODE_PROJECT.items():
            pyro.write_workspace_file(ws, path, text)
        who = pyro.exec_workspace(ws, "id -un; node --version; echo $NODE_ENV; echo ~")
        assert who["stdout"].splitlines()[0] == "node", who
        assert who["stdout"].splitlines()[1].startswith("v18.")
        assert who["stdout"].splitlines()[2:] == ["development", "/home/node"]

        installed = pyro.exec_workspace(
            ws, "npm install --no-audit --no-fund 2>&1", timeout_seconds=600
        )
        assert installed["exit_code"] == 0, installed["stdout"][-3000:]
        tested = pyro.exec_workspace(ws, "npm test 2>&1", timeout_seconds=300)
        assert tested["exit_code"] == 0 and "Passed:    2" in tested["stdout"], tested
        owners = pyro.exec_workspace(ws, "stat -c %U node_modules/ms/package.json")
        assert owners["stdout"] == "node\n"

        # The secret reaches the image's user, as a variable and as its file.
        token = pyro.exec_workspace(
            ws,
            'test "$T" = "$(cat /run/pyro-secrets/NPM_TOKEN)" && echo same',
            secret_env=["NPM_TOKEN:T"],
        )
        assert token["stdout"] == "same\n", token

        # Suspended with its memory and resumed: the user, the toolchain and the files stay.
        assert pyro.stop_workspace(ws)["state"] in ("suspended", "stopped")
        pyro.start_workspace(ws)
        again = pyro.exec_workspace(ws, "id -un && node_modules/.bin/uvu test", timeout_seconds=300)
        assert again["exit_code"] == 0 and again["stdout"].startswith("node\n"), again
        assert "Passed:    2" in again["stdout"]
        pyro.delete_workspace(ws)

        # A build trusts what a workspace trusts: a RUN step of the image's user
        # installs from the same registry, through the same TLS (these hosts'
        # connections are intercepted by a CA only the host knows).
        context = tmp_path / "app"
        context.mkdir()
        for path, text in NODE_PROJECT.items():
            (context / path).parent.mkdir(parents=True, exist_ok=True)
            (context / path).write_text(text)
        (context / "Dockerfile").write_text(
            "FROM node:18\nWORKDIR /home/node/app\nCOPY --chown=node . .\n"
            'RUN npm install --no-audit --no-fund && echo "$NODE_EXTRA_CA_CERTS" > ca-used\n'
        )
        built = pyro.build_environment(
            "node-app:1", context=context, allow_package_index=True, step_timeout_seconds=900
        )
        assert built["installed"], built
        ran = pyro.run_in_vm(
            "node-app:1",
            "cd /home/node/app && node_modules/.bin/uvu test && cat ca-used && "
            "ls -a /dev/.pyro-build-ca.pem /usr/local/share/ca-certificates 2>&1",
            timeout_seconds=300,
        )
        assert "Passed:    2" in ran["stdout"], ran
        # The host's CAs reached the step, not the image.
        assert "/dev/.pyro-build-ca.pem\n" in ran["stdout"] and "pyro-host" not in ran["stdout"]
        assert "cannot access '/dev/.pyro-build-ca.pem'" in ran["stdout"]
    finally:
        for workspace in pyro.list_workspaces()["workspaces"]:
            pyro.delete_workspace(workspace["workspace_id"])
    assert leaked_processes(state) == []


def test_a_killed_pull_and_two_pulls_at_once_leave_one_whole_environment(
    sdk: Pyro, tmp_path: Path, image_cache: Path
) -> None:
    layout = tmp_path / "layout"
    reference = images_helper.busybox_image(layout, "slow")
    zeros = b"\0" * (96 * 2**20)  # some work for the building guest
    images_helper.add_layer(layout, "slow", [(images_helper.entry("opt/zeros"), zeros)])
    state = tmp_path / "state"
    env = dict(os.environ, PYRO_HOME=str(state), PYRO_CACHE_DIR=str(image_cache))
    command = [sys.executable, "-m", "pyro_mcp.cli.main", "env", "pull", "--no-prepare", reference]
    command.append("--name")

    # kill -9 while the guest applies the layers: its guest goes with it, nothing is installed.
    with subprocess.Popen(
        [*command, "slow:1"], env=env, stderr=subprocess.PIPE, text=True
    ) as pulling:
        assert pulling.stderr is not None
        for line in pulling.stderr:
            if "phase=layers applying" in line:
                break
        pulling.kill()
        pulling.wait(30)
    deadline = time.monotonic() + 60
    while leaked_processes(state) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leaked_processes(state) == []
    assert not list((state / "vms").glob("image-build-*"))
    with pytest.raises(NotFound):
        sdk.inspect_environment("slow:1")
    with pytest.raises(NotFound):
        sdk.create_workspace(environment="slow:1")
    layers = image_cache / "layers"
    unrecorded = [d for d in layers.glob("*/*.qcow2") if not d.with_suffix(".json").exists()]
    assert unrecorded  # what the killed pull was writing

    # Two pulls of it at once: one builds, the other waits and shares; the leftovers go.
    both = [
        subprocess.Popen(
            [*command, "slow:1", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [process.communicate(timeout=900) for process in both]
    for process, (out, err) in zip(both, results, strict=True):
        assert process.returncode == 0, err[-3000:]
        assert json.loads(out)["installed"]
    assert sum("already on disk" in err for _, err in results) == 1, results
    assert any("an interrupted pull or build left" in err for _, err in results)
    assert all(d.with_suffix(".json").exists() for d in layers.glob("*/*.qcow2"))
    assert not list(layers.glob("*/.unpacked-*"))
    ran = sdk.run_in_vm("slow:1", "stat -c %s /opt/zeros", timeout_seconds=60)
    assert ran["stdout"] == f"{len(zeros)}\n"


def test_a_full_disk_is_named_and_the_next_pull_with_room_finishes(
    tmp_path: Path, cache_dir: Path
) -> None:
    """The cache on a 48 MiB tmpfs, an image of 30 MiB of noise: the pull fails
    saying the disk is full and how to make room, nothing is installed; with
    room made, the same pull finishes."""
    layout = tmp_path / "layout"
    reference = images_helper.busybox_image(layout, "noise")
    noise = os.urandom(30 * 2**20)  # does not compress
    images_helper.add_layer(layout, "noise", [(images_helper.entry("opt/noise"), noise)])
    cache = tmp_path / "small"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", cache], check=True)
    state = tmp_path / "state"
    try:
        for shared in ("kernels", "runtime", "warm-builder"):
            (cache_dir / shared).mkdir(parents=True, exist_ok=True)
            (cache / shared).symlink_to(cache_dir / shared)
        pyro = Pyro(state_dir=state, cache_dir=cache, progress=lambda _: None)
        with pytest.raises(images.ImageError, match="is full") as full:
            pyro.pull_environment(reference, name="noise:1")
        assert "pyro env prune" in str(full.value) and "PYRO_CACHE_DIR" in str(full.value)
        with pytest.raises(NotFound):
            pyro.inspect_environment("noise:1")
        layers = cache / "layers"
        assert not [d for d in layers.rglob("*.qcow2") if not d.with_suffix(".json").exists()]
        assert not list(layers.glob("*/.unpacked-*"))

        subprocess.run(["mount", "-o", "remount,size=400m", cache], check=True)
        assert pyro.pull_environment(reference, name="noise:1")["installed"]
        ran = pyro.run_in_vm("noise:1", "stat -c %s /opt/noise", timeout_seconds=60)
        assert ran["stdout"] == f"{len(noise)}\n"
    finally:
        assert leaked_processes(state) == []
        subprocess.run(["umount", "-l", cache], check=True)
