"""Suspend and resume against stop and cold start, side by side in one run (medians).

    uv run python benchmarks/suspend.py [--runs N]

For an idle workspace (the default environment, 1 vCPU, 1 GiB):

- suspend: `stop_workspace` (memory saved, VM process exits) against
  `stop_workspace(discard_memory=True)`;
- back to a usable guest: `start_workspace` plus the first exec answered,
  after a suspend (resume) against after a stop (cold boot from the disks);
- the saved memory's size.

Each line ends with the ratio of the slower path to the faster one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pyro_mcp import Pyro


def timed(action: object) -> float:
    started = time.monotonic()
    action()  # type: ignore[operator]
    return (time.monotonic() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyro-bench-") as tmp:
        pyro = Pyro(state_dir=Path(tmp) / "state")
        ws = pyro.create_workspace()["workspace_id"]
        try:
            pyro.exec_workspace(ws, "true")
            samples: dict[str, list[float]] = {k: [] for k in ("sus", "stop", "res", "cold")}
            sizes = []
            for _ in range(args.runs):
                samples["sus"].append(
                    timed(lambda: sizes.append(pyro.stop_workspace(ws)["memory_bytes"]))
                )
                samples["res"].append(
                    timed(lambda: (pyro.start_workspace(ws), pyro.exec_workspace(ws, "true")))
                )
                samples["stop"].append(timed(lambda: pyro.stop_workspace(ws, discard_memory=True)))
                samples["cold"].append(
                    timed(lambda: (pyro.start_workspace(ws), pyro.exec_workspace(ws, "true")))
                )
        finally:
            pyro.delete_workspace(ws)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"runs: {args.runs} (medians)")
    print(
        f"suspend (memory saved)            {med['sus']:7.0f} ms   "
        f"stop --discard-memory {med['stop']:7.0f} ms   ratio {med['sus'] / med['stop']:.2f}"
    )
    print(
        f"start + first exec, resumed       {med['res']:7.0f} ms   "
        f"cold boot from disks  {med['cold']:7.0f} ms   ratio {med['cold'] / med['res']:.1f}x"
    )
    print(f"saved memory                      {statistics.median(sizes) / 2**20:7.0f} MiB")


if __name__ == "__main__":
    main()
