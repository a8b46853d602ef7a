"""What a diff and a create cost as a project grows: medians, never timed assertions.

    uv run python benchmarks/diff_scale.py [--runs N] [--sizes 1000,10000,50000]

For each size, a Git project of generated files (20 packages of small
modules, committed) is seeded into a warm ``debian:12`` workspace, three
files are changed, and the script prints medians of:

- create + seed, from the project (its Git-tracked files, staged) and from
  the same directory as a plain seed (written into the baseline as it is);
- diff through the SDK: the guest looks only where its change record says
  something happened;
- the guest's full walk of both trees (what it falls back to when the record
  cannot be trusted), in the same run, and the ratio between the two;
- summary through the SDK (it includes the diff);
- export of the whole project to a host directory: the unchanged part from
  the baseline on the host, the changes from the guest, against the guest
  packing every file (the path taken when the baseline cannot be used),
  measured in the same run.

The growth down the table is the point: the recorded diff follows the
change, the walk follows the project.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pyro_mcp import Pyro
from pyro_mcp.agent import operations as guest
from pyro_mcp.workspaces import export

CHANGE = "echo x >> pkg1/module1.py && echo y >> pkg2/module2.py && echo z > notes.txt"


def median_s(runs: int, action: Callable[[], object]) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def make_project(root: Path, files: int) -> Path:
    for index in range(files):
        path = root / f"pkg{index % 20}" / f"module{index}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"value_{n} = {n}\n" for n in range(20)))
    git = ["git", "-C", str(root), "-c", "user.name=bench", "-c", "user.email=bench@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "generated"], check=True)
    return root


def full_walk(pyro: Pyro, ws: str) -> None:
    workspaces = pyro._workspaces
    with workspaces.ctx.connect(workspaces.ctx.find(ws)) as client:
        reply = guest.diff(client, {"walk": True, "explain": True})
    assert reply["walked"] and len(reply["changes"]) == 3, reply


def full_pack_export(pyro: Pyro, ws: str, output: Path) -> None:
    real = export.export_directory
    export.export_directory = lambda *args: None
    try:
        pyro.export_workspace(ws, ".", output, overwrite=True)
    finally:
        export.export_directory = real


def measure(pyro: Pyro, project: Path, runs: int) -> dict[str, float]:
    created: list[str] = []

    def create(**kwargs: object) -> None:
        created.append(pyro.create_workspace(**kwargs)["workspace_id"])  # type: ignore[arg-type]

    row = {
        "create_project": median_s(runs, lambda: create(project_path=project)),
        "create_directory": median_s(runs, lambda: create(seed_path=project)),
    }
    for extra in created[1:]:
        pyro.delete_workspace(extra)
    ws = created[0]
    try:
        assert pyro.exec_workspace(ws, CHANGE)["exit_code"] == 0
        assert len(pyro.diff_workspace(ws)["changes"]) == 3
        row["diff"] = median_s(runs, lambda: pyro.diff_workspace(ws))
        row["walk"] = median_s(runs, lambda: full_walk(pyro, ws))
        row["summary"] = median_s(runs, lambda: pyro.summarize_workspace(ws))
        out = project.parent / f"{project.name}-export"
        row["export"] = median_s(runs, lambda: pyro.export_workspace(ws, ".", out, overwrite=True))
        row["export_full"] = median_s(runs, lambda: full_pack_export(pyro, ws, out))
    finally:
        pyro.delete_workspace(ws)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="1000,10000")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="pyro-bench-") as tmp:
        work = Path(tmp)
        pyro = Pyro(state_dir=work / "state")
        pyro.pull_environment("debian:12")
        pyro.prepare()
        print(
            f"{'files':>7} {'create+seed project':>20} {'create+seed dir':>16} "
            f"{'diff':>8} {'full walk':>10} {'ratio':>6} {'summary':>8}"
            f" {'export':>7} {'full pack':>10} {'ratio':>6}"
            f"  (seconds, median of {args.runs})"
        )
        for size in sizes:
            row = measure(pyro, make_project(work / f"project-{size}", size), args.runs)
            print(
                f"{size:>7} {row['create_project']:>20.2f} {row['create_directory']:>16.2f} "
                f"{row['diff']:>8.3f} {row['walk']:>10.3f} {row['walk'] / row['diff']:>5.1f}x "
                f"{row['summary']:>8.3f} {row['export']:>7.2f} {row['export_full']:>10.2f} "
                f"{row['export_full'] / row['export']:>5.1f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
