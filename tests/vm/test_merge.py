"""Same-page merging: a running warm guest gives the memory it freed back to the host."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_mcp import Pyro
from pyro_mcp.agent.client import SupervisorClient
from pyro_mcp.vm import merge
from pyro_mcp.vm.files import VmFiles


def fake_ksm(root: Path, run: str, zero_pages: str = "0") -> Path:
    root.mkdir()
    for name, value in (
        ("run", run),
        ("use_zero_pages", zero_pages),
        ("ksm_zero_pages", "2560"),
        ("pages_sharing", "256"),
    ):
        (root / name).write_text(value + "\n")
    return root


def test_pyro_turns_merging_on_with_zero_pages_when_it_is_off(tmp_path: Path) -> None:
    root = fake_ksm(tmp_path / "ksm", "0")
    assert merge.status(root).state == "off" and merge.status(root).fix
    merge.ensure(root)
    assert (root / "run").read_text() == "1" and (root / "use_zero_pages").read_text() == "1"
    report = merge.status(root).to_dict()
    assert report["state"] == "on" and report["zero_pages"] and report["fix"] is None
    assert report["folded_mib"] == 10.0 and report["merged_mib"] == 1.0


def test_a_host_set_up_already_or_an_opt_out_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unmerging = fake_ksm(tmp_path / "unmerging", "2")
    merge.ensure(unmerging)
    assert (unmerging / "run").read_text().strip() == "2"
    without_zero_pages = fake_ksm(tmp_path / "plain", "1")
    merge.ensure(without_zero_pages)
    assert (without_zero_pages / "use_zero_pages").read_text().strip() == "0"
    assert "use_zero_pages is off" in merge.status(without_zero_pages).note

    monkeypatch.setenv("PYRO_MEMORY_MERGE", "off")
    off = fake_ksm(tmp_path / "off", "0")
    merge.ensure(off)
    assert (off / "run").read_text().strip() == "0"
    assert "PYRO_MEMORY_MERGE" in merge.status(off).note


def test_no_merging_or_no_permission_is_reported_not_raised(tmp_path: Path) -> None:
    missing = merge.status(tmp_path / "absent")
    assert missing.state == "unavailable" and "suspended" in missing.note
    merge.ensure(tmp_path / "absent")
    # A knob that cannot be written (as a non-root user cannot): guests run anyway.
    root = fake_ksm(tmp_path / "ksm", "0")
    (root / "use_zero_pages").unlink()
    (root / "use_zero_pages").mkdir()
    merge.ensure(root)
    assert (root / "run").read_text().strip() == "0"


@pytest.fixture
def fast_scan() -> Iterator[None]:
    """Let ksmd scan faster while the test waits (the host's own rate is kept after)."""
    knob = merge.KSM_DIR / "pages_to_scan"
    # pyro turns merging on only as root on a kernel with KSM, as every machine
    # here and CI is; elsewhere this feature cannot work, and the test says so.
    assert os.access(knob, os.W_OK), f"{knob} is not writable: run the tests as root"
    before = knob.read_text().strip()
    knob.write_text("2000")
    try:
        yield
    finally:
        knob.write_text(before)


def qemu_pid(pyro: Pyro, ws: str) -> int:
    files = VmFiles(pyro._workspaces.vms.paths.vms_dir / pyro.status_workspace(ws)["vm_id"])
    with SupervisorClient(files.control_socket) as client:
        return int(client.call("status", timeout=10)["qemu_pid"])


def rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) >> 10
    raise AssertionError("no VmRSS")


# Writes one byte per page of 200 MB it takes fresh: every other byte must be 0.
FRESH_PAGES_READ_ZERO = (
    'python3 -c "import mmap; n = 200 << 20; m = mmap.mmap(-1, n)\n'
    "for i in range(0, n, 4096): m[i] = 1\n"
    'print(m[:].count(0) == n - n // 4096)"'
)


def assert_freed_memory_comes_back(pyro: Pyro, ws: str, use: str, bound: float) -> None:
    """After ``use`` (a command that takes 300 MB and exits), QEMU's RSS drops by
    200 MiB within ``bound`` seconds while the guest runs, and the pages the host
    dropped read as zero when the guest takes them again."""
    pid = qemu_pid(pyro, ws)
    # The peak is read while the command runs: a guest that reports free pages
    # gives most of them back within a second or two of the exit, before a
    # reading taken after the call (on a busy host) would see them.
    samples = [rss_mib(pid)]
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            samples.append(rss_mib(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        pyro.exec_workspace(ws, use, timeout_seconds=120)
    finally:
        running.clear()
        sampler.join()
    peak = max(samples)
    assert peak > 350
    deadline = time.monotonic() + bound
    rss = rss_mib(pid)
    while rss > peak - 200 and time.monotonic() < deadline:
        time.sleep(1)
        rss = rss_mib(pid)
    assert rss <= peak - 200, f"QEMU RSS {peak} MiB after the free, still {rss} MiB"
    check = pyro.exec_workspace(ws, FRESH_PAGES_READ_ZERO)
    assert check["stdout"].strip() == "True", check


def test_a_running_warm_guest_gives_the_memory_it_freed_back(pyro: Pyro, fast_scan: None) -> None:
    """ksmd folds the zeroed pages back in the background. A guest with
    init_on_free does not zero the pages it hands out (they were zeroed when
    freed), so pages the host folded must still read as zero."""
    ws = pyro.create_workspace()["workspace_id"]
    try:
        assert merge.status().state == "on"  # the launch turned it on
        assert_freed_memory_comes_back(pyro, ws, "python3 -c \"x = b'x' * (300 << 20)\"", bound=180)
    finally:
        pyro.delete_workspace(ws)


# Distinct pages (each starts with its own offset): same-page merging cannot
# fold them, so only the guest's free page reports can give them back.
DISTINCT_300MB = (
    'python3 -c "x = bytearray(300 << 20)\n'
    "for i in range(0, len(x), 4096): x[i:i + 8] = i.to_bytes(8, 'little')\""
)


def test_a_running_cold_booted_guest_hands_the_memory_it_freed_back(
    pyro: Pyro, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold-booted guest does not zero what it frees, but it reports free pages
    (virtio balloon, free page reporting) and QEMU drops them while it runs."""
    monkeypatch.setenv("PYRO_WARM", "0")
    ws = pyro.create_workspace()["workspace_id"]
    try:
        assert pyro.status_workspace(ws)["boot_kind"] == "cold"
        assert_freed_memory_comes_back(pyro, ws, DISTINCT_300MB, bound=120)
        # The balloon device is part of the saved machine: it suspends and resumes.
        pyro.stop_workspace(ws)
        assert pyro.start_workspace(ws)["resumed"]
        assert pyro.exec_workspace(ws, "echo ok")["stdout"] == "ok\n"
    finally:
        pyro.delete_workspace(ws)
