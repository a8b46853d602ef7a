"""How many idle workspaces one host holds: memory of N running, and M suspended resumed.

    uv run python benchmarks/density.py [--running N] [--suspended M] [--settle S]

Prints, in one run:

- N idle warm-started workspaces running at once: the summed PSS of their QEMU
  processes per workspace (PSS splits the shared, clean pages of the warm
  snapshot's RAM file between the guests mapping it) and their RSS, next to
  the same for cold-booted guests (a few, PYRO_WARM=0); with ``--settle``, the
  warm ones again that many seconds later, once the host's same-page merging
  (KSM, vm/merge.py) has folded zero pages and merged identical ones;
- M workspaces suspended at once: how many QEMU processes remain (none), how
  long listing them takes, and the median time to resume each (start + exec).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from pyro_mcp import Pyro
from pyro_mcp.vm import merge


def qemu_usage(marker: str, kind: str = "qemu-system") -> list[tuple[float, float]]:
    """(RSS, PSS) in MiB of each ``kind`` process (QEMU, or the VM's supervisor with
    ``pyro_mcp.vm.supervisor``) whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if kind not in cmdline or marker not in cmdline:
                continue
            rss = pss = 0
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
        except OSError:
            continue
        found.append((rss / 1024, pss / 1024))
    return found


def running_usage(
    count: int, cold: bool, settle: float = 0.0
) -> tuple[float, float, int, float, tuple[float, float] | None]:
    """Per-workspace QEMU RSS and PSS, the count measured and the supervisor's PSS (MiB),
    with ``count`` idle workspaces running at once; with ``settle``, QEMU RSS and PSS
    again after that many more seconds of the host's same-page merging."""
    previous = os.environ.get("PYRO_WARM")
    os.environ["PYRO_WARM"] = "0" if cold else "1"
    try:
        with tempfile.TemporaryDirectory(prefix="pyro-density-") as tmp:
            pyro = Pyro(state_dir=Path(tmp) / "state")
            ids = []
            try:
                for _ in range(count):
                    ws = pyro.create_workspace(idle_suspend_seconds=0)["workspace_id"]
                    pyro.exec_workspace(ws, "true")
                    ids.append(ws)
                time.sleep(5)  # idle
                usage = qemu_usage(tmp)
                supervisors = qemu_usage(tmp, "pyro_mcp.vm.supervisor")
                settled = None
                if settle:
                    time.sleep(settle)
                    later = qemu_usage(tmp)
                    settled = (
                        sum(u[0] for u in later) / len(later),
                        sum(u[1] for u in later) / len(later),
                    )
            finally:
                for ws in ids:
                    pyro.delete_workspace(ws)
    finally:
        if previous is None:
            os.environ.pop("PYRO_WARM", None)
        else:
            os.environ["PYRO_WARM"] = previous
    return (
        sum(u[0] for u in usage) / len(usage),
        sum(u[1] for u in usage) / len(usage),
        len(usage),
        sum(u[1] for u in supervisors) / max(1, len(supervisors)),
        settled,
    )


def suspended_round(count: int) -> tuple[int, float, float]:
    """Suspend ``count`` workspaces; QEMU processes left, list time, median resume."""
    with tempfile.TemporaryDirectory(prefix="pyro-density-") as tmp:
        pyro = Pyro(state_dir=Path(tmp) / "state")
        ids = []
        try:
            for _ in range(count):
                ws = pyro.create_workspace(idle_suspend_seconds=0)["workspace_id"]
                pyro.exec_workspace(ws, "echo kept > /tmp/k")
                pyro.stop_workspace(ws)
                ids.append(ws)
            left = len(qemu_usage(tmp))
            started = time.monotonic()
            listed = pyro.list_workspaces()["workspaces"]
            list_ms = (time.monotonic() - started) * 1000
            assert sum(w["state"] == "suspended" for w in listed) == count
            resumes = []
            for ws in ids:
                started = time.monotonic()
                assert pyro.exec_workspace(ws, "cat /tmp/k")["stdout"] == "kept\n"
                resumes.append((time.monotonic() - started) * 1000)
                pyro.stop_workspace(ws)
        finally:
            for ws in ids:
                pyro.delete_workspace(ws)
    return left, list_ms, statistics.median(resumes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--running", type=int, default=20)
    parser.add_argument("--cold", type=int, default=3, help="cold-booted guests to compare")
    parser.add_argument("--suspended", type=int, default=20, help="at least 1")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="also measure the running workspaces after this many more seconds, once the "
        "host's same-page merging (pyro doctor: memory) has scanned them",
    )
    args = parser.parse_args()
    os.environ.setdefault("PYRO_MAX_RUNNING", str(max(args.running, args.cold) + 2))
    warm_rss, warm_pss, warm_n, supervisor_pss, settled = running_usage(
        args.running, cold=False, settle=args.settle
    )
    cold_rss, cold_pss, cold_n, _, _ = running_usage(args.cold, cold=True)
    print(
        f"{warm_n} idle warm workspaces running: QEMU PSS {warm_pss:.0f} MiB, RSS "
        f"{warm_rss:.0f} MiB each; with its supervisor (PSS {supervisor_pss:.0f} MiB) "
        f"{warm_pss + supervisor_pss:.0f} MiB per workspace"
    )
    if settled is not None:
        print(
            f"  {args.settle:.0f} s later (same-page merging {merge.status().state}): QEMU PSS "
            f"{settled[1]:.0f} MiB, RSS {settled[0]:.0f} MiB each; with its supervisor "
            f"{settled[1] + supervisor_pss:.0f} MiB per workspace"
        )
    print(
        f"{cold_n} idle cold-booted workspaces: PSS {cold_pss:.0f} MiB, "
        f"RSS {cold_rss:.0f} MiB each (warm PSS is {cold_pss / warm_pss:.1f}x smaller)"
    )
    left, list_ms, resume_ms = suspended_round(args.suspended)
    print(
        f"{args.suspended} suspended: {left} QEMU processes, listed in {list_ms:.0f} ms, "
        f"each resumed (start + exec) in {resume_ms:.0f} ms (median)"
    )


if __name__ == "__main__":
    main()
