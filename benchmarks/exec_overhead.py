"""pyro's own cost per call on a running workspace, next to what the guest itself spends.

    uv run python benchmarks/exec_overhead.py [--runs N] [--before REV]

On a running warm ``debian:12`` workspace, through the SDK, prints medians of:

- ``exec true``: a whole ``exec_workspace`` round trip;
- the guest's own spawn of ``/bin/true`` (a Python ``subprocess.run`` loop inside
  the guest, per spawn): what no host-side change can remove;
- their difference: pyro's overhead on an exec;
- a bare agent ping (host -> supervisor -> guest -> back);
- a 1 KB file write and read, and a one-hunk patch.

``--before REV`` measures a second copy of the tree at REV (a git worktree,
imported in a child process) in the same run and prints both side by side
with the ratio, so a change is judged against the code it replaces.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPAWN_PROBE = (
    "import subprocess, time\n"
    "subprocess.run(['/bin/true'])\n"
    "t = time.monotonic()\n"
    "for _ in range(50): subprocess.run(['/bin/true'])\n"
    "print((time.monotonic() - t) / 50 * 1000)\n"
)
PATCH = """--- a/notes.txt
+++ b/notes.txt
@@ -1,3 +1,3 @@
 one
-two
+TWO
 three
"""
UNPATCH = PATCH.replace("-two\n+TWO", "-TWO\n+two")


def median_ms(runs: int, action: Callable[[], object]) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def measure(runs: int) -> dict[str, float]:
    """The numbers for the pyro_mcp this interpreter imports."""
    from pyro_mcp import Pyro

    with tempfile.TemporaryDirectory(prefix="pyro-bench-exec-") as tmp:
        pyro = Pyro(state_dir=Path(tmp) / "state")
        ws = pyro.create_workspace("debian:12")["workspace_id"]
        try:
            pyro.write_workspace_file(ws, "notes.txt", "one\ntwo\nthree\n")
            for _ in range(3):  # warm the guest's caches and TCG's translations
                pyro.exec_workspace(ws, "true")
            numbers = {"exec": median_ms(runs, lambda: pyro.exec_workspace(ws, "true"))}
            spawns = [
                float(pyro.exec_workspace(ws, ["python3", "-c", SPAWN_PROBE])["stdout"])
                for _ in range(3)
            ]
            numbers["guest_spawn"] = statistics.median(spawns)
            numbers["overhead"] = numbers["exec"] - numbers["guest_spawn"]
            vm_id = pyro.status_workspace(ws)["vm_id"]
            with pyro._vms.connect(vm_id, "") as client:
                numbers["ping"] = median_ms(runs, lambda: client.agent("ping", {}, 10))
            kilobyte = "x" * 1023 + "\n"
            numbers["write_1k"] = median_ms(
                runs, lambda: pyro.write_workspace_file(ws, "k.txt", kilobyte)
            )
            numbers["read_1k"] = median_ms(runs, lambda: pyro.read_workspace_file(ws, "k.txt"))
            samples = []
            for index in range(runs):
                started = time.perf_counter()
                pyro.apply_workspace_patch(ws, PATCH if index % 2 == 0 else UNPATCH)
                samples.append((time.perf_counter() - started) * 1000)
            numbers["patch"] = statistics.median(samples)
        finally:
            pyro.delete_workspace(ws)
    return numbers


def measure_at(rev: str, runs: int) -> dict[str, float]:
    """The same numbers for the tree at ``rev``, in a child process."""
    with tempfile.TemporaryDirectory(prefix="pyro-bench-before-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), rev],
            check=True,
        )
        try:
            env = dict(os.environ, PYTHONPATH=str(tree / "src"))
            done = subprocess.run(
                [sys.executable, __file__, "--runs", str(runs), "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            return dict(json.loads(done.stdout.splitlines()[-1]))
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
            )


LABELS = {
    "exec": "exec `true`, whole round trip",
    "guest_spawn": "the guest's own spawn of /bin/true",
    "overhead": "pyro's overhead on an exec (difference)",
    "ping": "bare agent ping",
    "write_1k": "1 KB file write",
    "read_1k": "1 KB file read",
    "patch": "one-hunk patch apply",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--before", help="a git revision to measure next to this tree")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.runs)))
        return 0
    before = measure_at(args.before, args.runs) if args.before else None
    now = measure(args.runs)
    print(f"medians of {args.runs} runs on a running warm debian:12 workspace (ms)")
    header = f"{'':<42} {'now':>8}"
    if before:
        header += f" {args.before:>10} {'before/now':>11}"
    print(header)
    for key, label in LABELS.items():
        line = f"{label:<42} {now[key]:8.1f}"
        if before:
            line += f" {before[key]:10.1f} {before[key] / now[key]:10.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
