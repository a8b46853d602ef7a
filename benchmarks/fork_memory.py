"""A running warm workspace's QEMU memory before and after a fork, and after a suspend.

    uv run python benchmarks/fork_memory.py [--runs N]

Saving a guest's memory (a fork, a suspend) reads every page of the snapshot
RAM file the guest maps; pyro pages back out those the guest never wrote. This
prints, per run and as medians, the source's QEMU PSS and RSS before the fork,
right after it (the source runs on), and after a suspend and resume, with the
after/before ratio (target: within 1.5x).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from pyro_mcp import Pyro


def qemu_memory_mib(pyro: Pyro, workspace: str) -> dict[str, float]:
    """The workspace's QEMU: each smaps_rollup field (Rss, Pss, Private_Clean...) in MiB."""
    vm_id = pyro.status_workspace(workspace)["vm_id"]
    supervisor = next(v for v in pyro.list_vms() if v["vm_id"] == vm_id)["supervisor_pid"]
    qemu = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()[0]
    numbers = {}
    for line in Path(f"/proc/{qemu}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        numbers[name] = int(value.split()[0]) / 1024
    return numbers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {key: [] for key in ("before", "forked", "resumed")}
    rss: dict[str, list[float]] = {key: [] for key in rows}
    with tempfile.TemporaryDirectory(prefix="pyro-bench-fork-memory-") as tmp:
        pyro = Pyro(state_dir=Path(tmp) / "state")
        pyro.prepare(network=False)
        for _ in range(args.runs):
            ws = pyro.create_workspace()["workspace_id"]
            try:
                pyro.exec_workspace(ws, "echo kept > /workspace/kept")
                before = qemu_memory_mib(pyro, ws)
                fork = pyro.fork_workspace(ws)["forks"][0]["workspace_id"]
                forked = qemu_memory_mib(pyro, ws)
                pyro.delete_workspace(fork)
                pyro.stop_workspace(ws)
                pyro.start_workspace(ws)
                pyro.exec_workspace(ws, "cat /workspace/kept")
                resumed = qemu_memory_mib(pyro, ws)
            finally:
                pyro.delete_workspace(ws)
            for key, numbers in (("before", before), ("forked", forked), ("resumed", resumed)):
                rows[key].append(numbers["Pss"])
                rss[key].append(numbers["Rss"])
    pss = {key: statistics.median(values) for key, values in rows.items()}
    rs = {key: statistics.median(values) for key, values in rss.items()}
    print(f"source QEMU memory, medians of {args.runs} (MiB)")
    for key, label in (("forked", "after a fork"), ("resumed", "after suspend + resume")):
        print(
            f"{label:<24} PSS {pss['before']:6.0f} -> {pss[key]:6.0f} "
            f"({pss[key] / pss['before']:.2f}x)   RSS {rs['before']:6.0f} -> {rs[key]:6.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
