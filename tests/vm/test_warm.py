"""Warm starts: restored guests are independent, correct, and faults fall back to cold boots.

These boot real guests. Tests that damage or age a snapshot work on a private
cache (sharing the built environment through a link) so the suite's own
snapshot is never touched.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyro_mcp import Pyro
from pyro_mcp.config import Paths
from pyro_mcp.vm import warm
from pyro_mcp.vm.service import VmService
from tests.conftest import TEST_ENVIRONMENT, leaked_processes

IDENTITY = (
    "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
    "python3 -c 'import os; print(os.getrandom(16).hex())'; "
    "hostname; cat /etc/machine-id; date +%s.%N"
)


def _snapshot_dir(cache: Path, network: bool = False) -> Path:
    shape = "1cpu-1024m" + ("-net" if network else "")
    return (cache / "warm" / "debian-12" / shape / "current").resolve()


def test_two_workspaces_restored_from_one_snapshot_are_independent(pyro: Pyro) -> None:
    first = pyro.create_workspace(TEST_ENVIRONMENT, name="first")
    second = pyro.create_workspace(TEST_ENVIRONMENT, name="second")
    assert first["boot_kind"] == second["boot_kind"] == "warm"
    outputs = []
    for workspace in (first, second):
        result = pyro.exec_workspace(workspace["workspace_id"], IDENTITY)
        assert result["exit_code"] == 0, result["stderr"]
        outputs.append(result["stdout"].split())
    (
        (urandom_a, getrandom_a, host_a, machine_a, _),
        (urandom_b, getrandom_b, host_b, machine_b, _),
    ) = outputs
    assert urandom_a != urandom_b
    assert getrandom_a != getrandom_b
    assert host_a != host_b and host_a.startswith("pyro-")
    assert machine_a != machine_b and re.fullmatch(r"[0-9a-f]{32}", machine_a)
    # Each has its own /workspace disk.
    pyro.write_workspace_file(first["workspace_id"], "mine.txt", "first only\n")
    listing = pyro.exec_workspace(second["workspace_id"], "ls /workspace")
    assert "mine.txt" not in listing["stdout"]
    assert pyro.diff_workspace(first["workspace_id"])["summary"]["added"] == 1


def test_a_warm_guest_zeroes_what_it_frees_and_its_snapshot_ram_is_sparse(
    pyro: Pyro, cache_dir: Path
) -> None:
    ws = pyro.create_workspace(TEST_ENVIRONMENT)["workspace_id"]
    out = pyro.exec_workspace(ws, "cat /proc/cmdline; dmesg | grep 'mem auto-init'")
    assert "init_on_free=1" in out["stdout"] and "heap free:on" in out["stdout"]
    ram = _snapshot_dir(cache_dir) / warm.RAM
    # The template zeroed all of RAM as it booted; the zero pages are holes.
    assert ram.stat().st_size == 1024 * 2**20
    assert ram.stat().st_blocks * 512 < 256 * 2**20


def test_a_warm_workspace_gets_its_seed_secrets_and_baseline(pyro: Pyro, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "app.py").write_text("print('hi')\n")
    workspace = pyro.create_workspace(
        TEST_ENVIRONMENT, seed_path=seed, secrets={"TOKEN": "s3cr3t-value"}
    )
    assert workspace["boot_kind"] == "warm" and workspace["boot_ms"] < 20_000
    ws = workspace["workspace_id"]
    result = pyro.exec_workspace(ws, "python3 app.py; echo $TOKEN", secret_env=["TOKEN"])
    assert result["stdout"] == "hi\n[REDACTED:TOKEN]\n"
    pyro.write_workspace_file(ws, "app.py", "print('changed')\n")
    assert [c["path"] for c in pyro.diff_workspace(ws)["changes"]] == ["app.py"]
    reset = pyro.reset_workspace(ws)
    assert reset["boot_kind"] == "warm"
    assert pyro.read_workspace_file(ws, "app.py")["content"] == "print('hi')\n"
    assert pyro.exec_workspace(ws, "cat /run/pyro-secrets/TOKEN")["stdout"] == "[REDACTED:TOKEN]"


def test_reset_to_a_named_snapshot_restores_warm(pyro: Pyro) -> None:
    ws = pyro.create_workspace(TEST_ENVIRONMENT)["workspace_id"]
    pyro.write_workspace_file(ws, "state.txt", "checkpointed\n")
    pyro.create_snapshot(ws, "checkpoint")
    pyro.write_workspace_file(ws, "state.txt", "later\n")
    reset = pyro.reset_workspace(ws, snapshot="checkpoint")
    assert reset["boot_kind"] == "warm"
    assert pyro.read_workspace_file(ws, "state.txt")["content"] == "checkpointed\n"


def test_a_networked_workspace_restores_from_the_nic_snapshot(pyro: Pyro) -> None:
    workspace = pyro.create_workspace(TEST_ENVIRONMENT, network_policy="egress")
    assert workspace["boot_kind"] == "warm"
    result = pyro.exec_workspace(
        workspace["workspace_id"], "ip -4 addr show eth0 || cat /proc/net/dev"
    )
    assert "eth0" in result["stdout"]


def test_pyro_run_and_vm_start_restore_warm(pyro: Pyro) -> None:
    result = pyro.run_in_vm(TEST_ENVIRONMENT, "cat /etc/hostname")
    assert result["boot_kind"] == "warm" and result["exit_code"] == 0
    assert result["stdout"].strip().startswith("pyro-")
    vm = pyro.create_vm(TEST_ENVIRONMENT)
    started = pyro.start_vm(vm["vm_id"])
    assert started["boot_kind"] == "warm"
    # A raw VM has the snapshot's drive stand-ins, but nothing is mounted on them.
    listed = pyro.exec_vm(vm["vm_id"], "ls /workspace 2>&1; true", keep_vm=True)
    assert listed["stdout"].strip() in (
        "",
        "ls: cannot access '/workspace': No such file or directory",
    ), listed
    pyro.stop_vm(vm["vm_id"])
    # The root disk now keeps what the guest wrote: a restart boots it cold.
    restarted = pyro.start_vm(vm["vm_id"])
    assert restarted["boot_kind"] == "cold" and restarted["boot_warning"] is None


def test_pyro_warm_0_forces_cold_boots(pyro: Pyro, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_WARM", "0")
    workspace = pyro.create_workspace(TEST_ENVIRONMENT)
    assert workspace["boot_kind"] == "cold" and workspace["boot_warning"] is None
    ws = workspace["workspace_id"]
    pyro.write_workspace_file(ws, "a.txt", "x\n")
    assert pyro.exec_workspace(ws, "cat a.txt; hostname")["stdout"].startswith("x\npyro-")
    assert pyro.reset_workspace(ws)["boot_kind"] == "cold"
    assert pyro.doctor()["daily_loop"]["warm_enabled"] is False


def test_the_guest_clock_is_the_hosts_after_restoring_a_days_old_snapshot(
    private_cache: Path, state_dir: Path
) -> None:
    """A snapshot whose guest clock is three days behind, as if taken three days ago."""
    from pyro_mcp import prepare

    vms = VmService(Paths(state_dir=state_dir, cache_dir=private_cache))
    installed = vms.environments.ensure(TEST_ENVIRONMENT, lambda _: None)
    key = vms.warm_key(installed, vcpu_count=1, mem_mib=1024, network=False)
    three_days_ago = time.time_ns() - 3 * 86400 * 10**9
    with vms.warm.lock(key):
        partial = vms.warm.new_partial(key)
        prepare._take(
            vms, installed, key, partial, lambda _: None, template_hello={"time_ns": three_days_ago}
        )
        vms.warm.commit(key, partial, {})
    client = Pyro(state_dir=state_dir, cache_dir=private_cache)
    try:
        workspace = client.create_workspace(TEST_ENVIRONMENT)
        assert workspace["boot_kind"] == "warm"
        before = time.time()
        guest = float(client.exec_workspace(workspace["workspace_id"], "date +%s.%N")["stdout"])
        assert before - 1.0 <= guest <= time.time() + 1.0
    finally:
        for leftover in client.list_workspaces()["workspaces"]:
            client.delete_workspace(leftover["workspace_id"])
    assert leaked_processes(state_dir) == []


def test_damaged_or_stale_snapshots_cold_boot_with_a_warning(private_pyro: Pyro) -> None:
    private_pyro.prepare(TEST_ENVIRONMENT, network=False)
    cache = private_pyro.paths.cache_dir
    snapshot = _snapshot_dir(cache)
    devices = snapshot / warm.DEVICES
    original = devices.read_bytes()

    # A flipped byte in the device state: caught by its hash before any use.
    devices.write_bytes(original[:100] + bytes([original[100] ^ 0xFF]) + original[101:])
    workspace = private_pyro.create_workspace(TEST_ENVIRONMENT)
    assert workspace["boot_kind"] == "cold"
    assert "corrupted" in workspace["boot_warning"] and "pyro prepare" in workspace["boot_warning"]
    loop = private_pyro.doctor()["daily_loop"]
    assert loop["status"] == "stale" and "corrupted" in loop["reason"]
    assert loop["fix"] == f"pyro prepare {TEST_ENVIRONMENT}"
    private_pyro.delete_workspace(workspace["workspace_id"])
    devices.write_bytes(original)

    # A truncated RAM file: caught by its size.
    ram = snapshot / warm.RAM
    stat = ram.stat()
    with ram.open("r+b") as handle:
        handle.truncate(stat.st_size // 2)
    result = private_pyro.run_in_vm(TEST_ENVIRONMENT, "true")
    assert result["boot_kind"] == "cold" and "wrong size" in result["boot_warning"]

    # A RAM file of the right size and time whose pages are gone: passes the
    # cheap checks, so the restore itself fails, is killed, and the run
    # falls back to a cold boot once.
    with ram.open("r+b") as handle:
        handle.truncate(0)
        handle.truncate(stat.st_size)
    os.utime(ram, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = private_pyro.run_in_vm(TEST_ENVIRONMENT, "echo alive")
    assert result["boot_kind"] == "cold" and result["stdout"] == "alive\n"
    assert "did not restore" in result["boot_warning"]

    # A snapshot whose key no longer matches (here: another QEMU).
    manifest_path = snapshot / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["key"]["qemu"] = "6.2.0 /usr/bin/qemu-system-x86_64 1:1"
    manifest_path.write_text(json.dumps(manifest))
    loop = private_pyro.doctor()["daily_loop"]
    assert loop["status"] == "stale" and "QEMU" in loop["reason"]
    vm = private_pyro.start_vm(private_pyro.create_vm(TEST_ENVIRONMENT)["vm_id"])
    assert vm["boot_kind"] == "cold" and "QEMU" in vm["boot_warning"]
    private_pyro.delete_vm(vm["vm_id"])

    # Prune removes what nothing can use; prepare then takes a good one again.
    pruned = private_pyro.prune_environments()
    assert str(snapshot) in pruned["removed"] and not snapshot.exists()
    assert private_pyro.doctor()["daily_loop"]["status"] == "cold"
    again = private_pyro.prepare(TEST_ENVIRONMENT, network=False)
    assert again["snapshots"][0]["status"] == "prepared"
    assert private_pyro.prepare(TEST_ENVIRONMENT, network=False)["already_warm"] is True


def _prepare_process(env: dict[str, str], *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "pyro_mcp.cli.main", "prepare", TEST_ENVIRONMENT),
            *("--json", "--no-network", *flags),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_during_prepare_leaves_nothing_used_and_concurrent_prepares_share_one(
    private_cache: Path, state_dir: Path
) -> None:
    env = dict(os.environ, PYRO_HOME=str(state_dir), PYRO_CACHE_DIR=str(private_cache))
    killed = _prepare_process(env)
    assert killed.stderr is not None
    for line in killed.stderr:
        if "phase=prove" in line:  # the template is saved; its proof VMs are running
            break
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed.stderr.close()
    assert killed.stdout is not None
    killed.stdout.close()
    client = Pyro(state_dir=state_dir, cache_dir=private_cache)
    assert client.doctor()["daily_loop"]["status"] == "cold"
    # The proof VMs notice their preparer is gone and stop by themselves.
    deadline = time.monotonic() + 30
    while leaked_processes(private_cache) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leaked_processes(private_cache) == []

    first, second = _prepare_process(env), _prepare_process(env)
    results = []
    for process in (first, second):
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    statuses = sorted(r["snapshots"][0]["status"] for r in results)
    assert statuses == ["already warm", "prepared"]
    assert results[0]["snapshots"][0]["path"] == results[1]["snapshots"][0]["path"]
    shape = _snapshot_dir(private_cache).parent
    assert [p.name for p in shape.iterdir() if p.name.startswith(".partial")] == []
    assert client.doctor()["daily_loop"]["status"] == "warm"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_while_preparing_keeps_the_previous_snapshot(
    private_pyro: Pyro,
) -> None:
    warm_root = private_pyro.paths.cache_dir / "warm"
    warm_root.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1400m", "tmpfs", str(warm_root)], check=True
    )
    try:
        private_pyro.prepare(TEST_ENVIRONMENT, network=False)
        good = _snapshot_dir(private_pyro.paths.cache_dir)
        free = os.statvfs(warm_root)
        filler = warm_root / "filler"
        with filler.open("wb") as handle:
            handle.truncate(0)
            handle.write(b"\0" * (free.f_bavail * free.f_frsize - 40 * 1024 * 1024))
        with pytest.raises(Exception) as failure:
            private_pyro.prepare(TEST_ENVIRONMENT, network=False, force=True)
        assert "space" in str(failure.value).lower() or "disk" in str(failure.value).lower()
        assert _snapshot_dir(private_pyro.paths.cache_dir) == good
        filler.unlink()
        loop = private_pyro.doctor()["daily_loop"]
        assert loop["status"] == "warm" and loop["path"] == str(good)
        assert private_pyro.create_workspace(TEST_ENVIRONMENT)["boot_kind"] == "warm"
    finally:
        for workspace in private_pyro.list_workspaces()["workspaces"]:
            private_pyro.delete_workspace(workspace["workspace_id"])
        subprocess.run(["umount", "-l", str(warm_root)], check=False)
