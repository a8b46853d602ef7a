"""Suspend and resume against stop and cold start, side by side in one run (medians).

    uv run python benchmarks/suspend.py [--runs N]

For an idle workspace (the default environment, 1 vCPU, 1 GiB):

- suspend: `stop_workspace` (memory saved, VM process exits) against
  `stop_workspace(discard_memory=True)`;
- back to a usable guest: `start_workspace` plus the first exec answered,
  after a suspend (resume) against after a stop (cold boot from the disks),
  and the resume of a cold-booted guest, whose memory is saved whole;
- the saved memory's size, thin (a warm-started guest: only what differs from
  its snapshot's RAM) and whole (a cold-booted guest);
- a guest that used 300 MB and freed it: its QEMU RSS, then while it keeps
  running (the host's same-page merging folds the pages it zeroed as it freed
  them), what its suspend saves (zero pages are left out) and its RSS once
  resumed; the same for a cold-booted guest, whose free pages are reported to
  the host (virtio balloon, free page reporting) instead;
- fork of a running workspace with a service up, to a usable child (its first
  exec answered), against creating a new workspace and starting the same
  service in it (the setup a fork saves), and the source's pause, also after
  it wrote 300 MB to its disks, with the host disk space that fork call took
  (nothing is copied: the source's images become layers the fork shares).

Each line ends with the ratio of the slower path to the faster one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from pyro_mcp import Pyro
from pyro_mcp.vm import merge


def allocated(root: Path) -> int:
    """Bytes of host disk the files under ``root`` take (each inode counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                stat = os.lstat(os.path.join(folder, name))
                if (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    total += stat.st_blocks * 512
    return total


def timed(action: object) -> float:
    started = time.monotonic()
    action()  # type: ignore[operator]
    return (time.monotonic() - started) * 1000


def qemu_rss_mib(pyro: Pyro, ws: str) -> int:
    """The RSS of a workspace's QEMU process (it runs in its VM directory)."""
    vm_dir = str(pyro._workspaces.vms.paths.vms_dir / pyro.status_workspace(ws)["vm_id"])
    for entry in Path("/proc").iterdir():
        try:
            if "qemu-system" in (entry / "cmdline").read_text() and (
                os.readlink(entry / "cwd") == vm_dir
            ):
                status = (entry / "status").read_text().splitlines()
                return (
                    int(next(line for line in status if line.startswith("VmRSS")).split()[1]) >> 10
                )
        except (OSError, StopIteration):
            continue
    return 0


# Pages that each start with their own offset: same-page merging cannot fold
# them, so a cold-booted guest gives them back only by reporting them free.
DISTINCT_300MB = (
    'python3 -c "x = bytearray(300 << 20)\n'
    "for i in range(0, len(x), 4096): x[i:i + 8] = i.to_bytes(8, 'little')\""
)


def freed_memory(pyro: Pyro, *, cold: bool = False) -> dict[str, float]:
    """A guest that used 300 MB and freed it: its QEMU RSS then, the saved memory, and
    its QEMU RSS once resumed. ``cold``: a cold-booted guest (free page reporting)."""
    ws = pyro.create_workspace()["workspace_id"]
    try:
        if cold:
            pyro.stop_workspace(ws, discard_memory=True)
            pyro.start_workspace(ws)
            pyro.exec_workspace(ws, DISTINCT_300MB, timeout_seconds=120)
        else:
            pyro.exec_workspace(ws, "python3 -c \"x = b'x' * (300 << 20)\"")
        used = qemu_rss_mib(pyro, ws)
        # While it keeps running: the host's same-page merging (vm/merge.py) folds
        # a warm guest's zeroed pages back at its own scan rate; a cold-booted
        # guest reports its free pages. Wait until RSS has dropped and then
        # settled (no further drop for 10 s), at most 5 minutes.
        started = time.monotonic()
        folded, settled = used, started
        while (cold or merge.status().state == "on") and time.monotonic() - started < 300:
            time.sleep(0.5)
            rss = qemu_rss_mib(pyro, ws)
            if rss < folded - 2:
                folded, settled = rss, time.monotonic()
            elif folded < used - 100 and time.monotonic() - settled > 10:
                break
        saved = pyro.stop_workspace(ws)["memory_bytes"] / 2**20
        pyro.start_workspace(ws)
        pyro.exec_workspace(ws, "true")
        return {
            "used": used,
            "folded": folded,
            "fold_s": settled - started,
            "saved": saved,
            "resumed": qemu_rss_mib(pyro, ws),
        }
    finally:
        pyro.delete_workspace(ws)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyro-bench-") as tmp:
        state = Path(tmp) / "state"
        pyro = Pyro(state_dir=state)
        samples: dict[str, list[float]] = {k: [] for k in ("sus", "stop", "res", "cold", "whole")}
        sizes: dict[str, list[int]] = {"thin": [], "whole": []}
        warm = pyro.create_workspace()["workspace_id"]  # suspends thin (a warm start)
        booted = pyro.create_workspace()["workspace_id"]  # stopped and cold-booted
        try:
            pyro.exec_workspace(warm, "true")
            pyro.exec_workspace(booted, "true")
            for _ in range(args.runs):
                samples["sus"].append(
                    timed(lambda: sizes["thin"].append(pyro.stop_workspace(warm)["memory_bytes"]))
                )
                samples["res"].append(
                    timed(lambda: (pyro.start_workspace(warm), pyro.exec_workspace(warm, "true")))
                )
                samples["stop"].append(
                    timed(lambda: pyro.stop_workspace(booted, discard_memory=True))
                )
                samples["cold"].append(
                    timed(
                        lambda: (pyro.start_workspace(booted), pyro.exec_workspace(booted, "true"))
                    )
                )
            # A cold-booted guest's memory is saved whole (nothing to thin against).
            for _ in range(args.runs):
                sizes["whole"].append(pyro.stop_workspace(booted)["memory_bytes"])
                samples["whole"].append(
                    timed(
                        lambda: (pyro.start_workspace(booted), pyro.exec_workspace(booted, "true"))
                    )
                )
        finally:
            pyro.delete_workspace(warm)
            pyro.delete_workspace(booted)
        freed = freed_memory(pyro)
        cold_freed = freed_memory(pyro, cold=True)
        ws = pyro.create_workspace()["workspace_id"]
        fork_samples, pauses, fresh_samples = [], [], []
        big_pauses: list[float] = []
        big_forks: list[float] = []
        big_space: list[float] = []
        try:
            start_web = dict(
                command="python3 -m http.server 8000", ready_http="http://127.0.0.1:8000/"
            )
            pyro.start_service(ws, "web", **start_web)  # type: ignore[arg-type]
            for _ in range(args.runs):
                started = time.monotonic()
                result = pyro.fork_workspace(ws)
                child = result["forks"][0]["workspace_id"]
                pyro.exec_workspace(child, "true")
                fork_samples.append((time.monotonic() - started) * 1000)
                pauses.append(result["pause_ms"])
                pyro.delete_workspace(child)
                started = time.monotonic()
                fresh = pyro.create_workspace()["workspace_id"]
                pyro.start_service(fresh, "web", **start_web)  # type: ignore[arg-type]
                pyro.exec_workspace(fresh, "true")
                fresh_samples.append((time.monotonic() - started) * 1000)
                pyro.delete_workspace(fresh)
            # Neither the pause nor the disk space grows with what the source wrote
            # to its disks: its images become the layers the fork shares.
            pyro.exec_workspace(
                ws,
                "head -c 300M /dev/zero | tr '\\0' x > /workspace/big; sync",
                timeout_seconds=600,
            )
            for _ in range(3):
                before = allocated(state)
                result = pyro.fork_workspace(ws)
                big_space.append(allocated(state) - before)
                big_pauses.append(result["pause_ms"])
                big_forks.append(result["fork_ms"])
                pyro.delete_workspace(result["forks"][0]["workspace_id"])
        finally:
            pyro.delete_workspace(ws)
    med = {k: statistics.median(v) for k, v in samples.items()}
    med["fork"] = statistics.median(fork_samples)
    med["fresh"] = statistics.median(fresh_samples)
    print(f"runs: {args.runs} (medians)")
    print(
        f"suspend (memory saved)            {med['sus']:7.0f} ms   "
        f"stop --discard-memory {med['stop']:7.0f} ms   ratio {med['sus'] / med['stop']:.2f}"
    )
    print(
        f"start + first exec, resumed       {med['res']:7.0f} ms   "
        f"cold boot from disks  {med['cold']:7.0f} ms   ratio {med['cold'] / med['res']:.1f}x"
    )
    print(
        f"  cold-booted guest (saved whole) {med['whole']:7.0f} ms   "
        f"ratio to the thin resume {med['whole'] / med['res']:.2f}"
    )
    print(
        f"saved memory                      {statistics.median(sizes['thin']) / 2**20:7.1f} MiB   "
        f"cold-booted guest (whole) {statistics.median(sizes['whole']) / 2**20:5.0f} MiB"
    )
    print(
        f"300 MB used and freed in the guest: QEMU RSS {freed['used']:.0f} MiB, "
        f"{freed['folded']:.0f} MiB {freed['fold_s']:.0f} s later while running "
        f"(same-page merging {merge.status().state}); saved {freed['saved']:.1f} MiB; "
        f"QEMU RSS once resumed {freed['resumed']:.0f} MiB"
    )
    print(
        f"300 MB used and freed in a cold-booted guest: QEMU RSS {cold_freed['used']:.0f} MiB, "
        f"{cold_freed['folded']:.0f} MiB {cold_freed['fold_s']:.0f} s later while running "
        f"(free page reporting); saved {cold_freed['saved']:.1f} MiB; "
        f"QEMU RSS once resumed {cold_freed['resumed']:.0f} MiB"
    )
    print(
        f"fork (service up) to first exec   {med['fork']:7.0f} ms   "
        f"create + start service {med['fresh']:6.0f} ms   "
        f"ratio {med['fresh'] / med['fork']:.1f}x   "
        f"source paused {statistics.median(pauses):.0f} ms"
    )
    print(
        f"fork after the source wrote 300 MB to /workspace: source paused "
        f"{statistics.median(big_pauses):.0f} ms, fork {statistics.median(big_forks):.0f} ms, "
        f"host disk taken {statistics.median(big_space) / 2**20:.1f} MiB with its memory "
        f"(a copy of the source's disks: 300+ MiB) (median of 3)"
    )


if __name__ == "__main__":
    main()
