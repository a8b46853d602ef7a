"""What building and saving environments cost: medians, never timed assertions.

    uv run python benchmarks/env_build.py [--runs N]

In a cache of its own that shares the installed ``debian:12`` (built first if
needed), the kernels and the runtime drive, it prints:

- a full build of a Dockerfile ``FROM debian:12`` (apt installs jq through
  the egress proxy, a project is copied, a user made, its tests run) next to
  the rebuild after editing the last line, and their ratio (target <= 30%),
  with the building guest restored warm (taken once per cache, before the
  timings) and booted cold (``PYRO_WARM=0``, as before it was warm);
- ``env save`` of a running workspace (the pause of the source, in ms) next to
  stopping the same workspace (what saving would cost if it had to stop);
- warm workspace create from the built environment next to warm create from
  the curated ``debian:12``, in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from pyro_mcp import Pyro
from pyro_mcp.config import default_paths
from pyro_mcp.environments import builder

DOCKERFILE = """\
FROM debian:12
RUN apt-get update -q && apt-get install -y -q --no-install-recommends jq \\
    && rm -rf /var/lib/apt/lists/*
RUN useradd -m -u 1000 app
WORKDIR /opt/app
COPY project/ ./
USER app
RUN python3 -m unittest -q
LABEL edit={edit}
RUN echo {edit} > /tmp/edited
"""


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    shared = default_paths().cache_dir
    mirror = urlsplit(builder.debian_mirror()).hostname or ""
    with tempfile.TemporaryDirectory(prefix="pyro-bench-build-") as tmp:
        work = Path(tmp)
        home = Pyro(state_dir=work / "home-state", cache_dir=shared)
        home.pull_environment("debian:12")
        cache = work / "cache"
        (cache / "environments").mkdir(parents=True)
        for name in ("kernels", "runtime", "warm-builder"):
            (shared / name).mkdir(parents=True, exist_ok=True)
            (cache / name).symlink_to(shared / name)
        (cache / "environments" / "debian-12").symlink_to(shared / "environments" / "debian-12")
        pyro = Pyro(state_dir=work / "state", cache_dir=cache)
        context = work / "ctx"
        (context / "project").mkdir(parents=True)
        (context / "project" / "test_app.py").write_text(
            "import unittest\n\nclass T(unittest.TestCase):\n"
            "    def test_ok(self):\n        self.assertEqual(1 + 1, 2)\n"
        )
        dockerfile = context / "Dockerfile"

        def build(edit: int, *, no_cache: bool = False) -> float:
            dockerfile.write_text(DOCKERFILE.format(edit=edit))
            return timed(
                lambda: pyro.build_environment(
                    "bench:1", context=context, allow_hosts=[mirror], no_cache=no_cache
                )
            )

        build(0)  # the warm building guest (with a NIC), taken once per cache
        full_s = build(1, no_cache=True)
        rebuild_s = build(2)
        os.environ["PYRO_WARM"] = "0"
        try:
            cold_full_s = build(3, no_cache=True)
            cold_rebuild_s = build(4)
        finally:
            del os.environ["PYRO_WARM"]

        ws = pyro.create_workspace(environment="bench:1")["workspace_id"]
        pyro.exec_workspace(ws, "echo data > /tmp/kept")
        saved = pyro.save_environment(ws, "saved:1")
        stop_s = timed(lambda: pyro.stop_workspace(ws, discard_memory=True))
        pyro.delete_workspace(ws)

        pyro.prepare("bench:1", network=False)
        home.prepare("debian:12", network=False)

        def create(client: Pyro, environment: str) -> float:
            seconds = []
            for _ in range(args.runs):
                started = time.perf_counter()
                made = client.create_workspace(environment=environment)["workspace_id"]
                seconds.append(time.perf_counter() - started)
                client.delete_workspace(made)
            return statistics.median(seconds)

        built_create = create(pyro, "bench:1")
        curated_create = create(home, "debian:12")

    print(f"{'path':<52} {'result':>10}")
    print(f"{'full build (apt, copy, user, tests; 6 disk steps)':<52} {full_s:>9.1f}s")
    print(f"{'rebuild after editing the last line':<52} {rebuild_s:>9.1f}s")
    print(f"{'  ratio (rebuild / full build, target <= 30%)':<52} {rebuild_s / full_s:>9.0%}")
    print(f"{'full build, building guest booted cold':<52} {cold_full_s:>9.1f}s")
    print(f"{'rebuild, building guest booted cold':<52} {cold_rebuild_s:>9.1f}s")
    print(f"{'  ratio (cold rebuild / cold full build)':<52} {cold_rebuild_s / cold_full_s:>9.0%}")
    print(f"{'  warm rebuild / cold rebuild':<52} {rebuild_s / cold_rebuild_s:>9.0%}")
    print(f"{'env save of a running workspace: its pause':<52} {saved['pause_ms']:>8}ms")
    print(
        f"{'  the whole save (copy of what differs, install)':<52} {saved['save_seconds']:>9.1f}s"
    )
    print(f"{'stopping the same workspace instead':<52} {stop_s * 1000:>8.0f}ms")
    print(f"{'warm create, built environment (median)':<52} {built_create:>9.3f}s")
    print(f"{'warm create, curated debian:12 (median)':<52} {curated_create:>9.3f}s")
    print(f"{'  ratio (built / curated)':<52} {built_create / curated_create:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
