"""Every shell block marked runnable in the recipe and onboarding docs runs, in order.

A block whose fence reads "```sh runnable" is part of the check: each page's
runnable blocks run as one bash script (`set -euo pipefail`), as a reader
following the page would run them, with `pyro` on PATH, a private PYRO_HOME
and a throwaway HOME (so `pyro host connect` cannot touch the real hosts'
configs). A doc example that no longer runs fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "docs" / "first-run.md",
    ROOT / "docs" / "walkthrough.md",
    *sorted((ROOT / "docs" / "use-cases").glob("*.md")),
]
HOST_BIN = ROOT / "tools" / "host-clis" / "node_modules" / ".bin"
BLOCK = re.compile(r"^```sh runnable\n(.*?)^```$", re.S | re.M)


def runnable_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def private_cache(shared: Path, private: Path) -> Path:
    """A cache that sees every environment, warm snapshot and download of the
    shared one, while what a page installs (an environment it builds or pulls,
    its layers) stays in it and goes with the test."""
    private.mkdir()
    for entry in shared.iterdir():
        if entry.name in ("environments", "warm"):
            (private / entry.name).mkdir()
            for child in entry.iterdir():
                (private / entry.name / child.name).symlink_to(child)
        elif entry.name not in ("layers", "oci", "oci.lock"):
            (private / entry.name).symlink_to(entry)
    return private


def test_every_recipe_page_has_a_runnable_block() -> None:
    pages = [p for p in DOCS if p.name != "README.md"]
    assert len(pages) >= 7
    assert all(runnable_blocks(p) for p in pages), [p.name for p in pages if not runnable_blocks(p)]


# A page's blocks may run for PAGE_SECONDS (the walkthrough pulls debian:12-build,
# takes its warm snapshots and installs a project from the package index under
# TCG, beside another test): pytest's own limit must not cut it off first.
PAGE_SECONDS = 1500


@pytest.mark.timeout(PAGE_SECONDS + 120)
@pytest.mark.parametrize("page", [p for p in DOCS if runnable_blocks(p)], ids=lambda p: p.stem)
def test_the_runnable_blocks_run(page: Path, cli_env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    env = dict(cli_env)
    env.update(
        PYRO_CACHE_DIR=str(private_cache(Path(cli_env["PYRO_CACHE_DIR"]), tmp_path / "cache")),
        HOME=str(home),
        TMPDIR=str(home / "tmp"),
        PATH=f"{Path(sys.executable).parent}:{HOST_BIN}:/usr/local/bin:/usr/bin:/bin",
        DISABLE_AUTOUPDATER="1",
        OPENCODE_DISABLE_AUTOUPDATE="1",
    )
    script = "set -euo pipefail\n" + "\n".join(runnable_blocks(page))
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=PAGE_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"{page.name}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
