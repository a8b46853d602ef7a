"""Building an environment for real: debootstrap, kernel, initramfs, manifest.

The builds run the CLI with ``PATH=/usr/bin:/bin`` (no sbin), as a non-login
root shell, sudo's secure_path or a systemd unit may give it: every host
program must still be found. They build in a private cache that shares only
the kernel and package downloads, so no earlier run's build can stand in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_mcp.environments.cache import EnvironmentCache
from tests.cli_helper import pyro_cli

pytestmark = pytest.mark.vm


@pytest.fixture
def build_env(cli_env: dict[str, str], cache_dir: Path, tmp_path: Path) -> dict[str, str]:
    private = tmp_path / "cache"
    private.mkdir()
    for shared in ("kernels", "debs"):
        (cache_dir / shared).mkdir(parents=True, exist_ok=True)
        (private / shared).symlink_to(cache_dir / shared)
    return dict(cli_env, PYRO_CACHE_DIR=str(private), PATH="/usr/bin:/bin")


def _pull_killed_at(env: dict[str, str], phase: str) -> str:
    """Start `pyro env pull debian:12-base`, SIGKILL it (and its children) at ``phase``.

    Returns what it printed on stderr until then.
    """
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyro_mcp.cli.main",
            "env",
            "pull",
            "debian:12-base",
            "--no-prepare",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if f"phase={phase}" in line:
                os.killpg(process.pid, signal.SIGKILL)
                break
    finally:
        process.stderr.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(60)
    assert any(f"phase={phase}" in line for line in seen), "".join(seen[-20:])
    return "".join(seen)


def test_a_build_killed_in_its_configure_phase_is_reported_then_redone_cleanly(
    build_env: dict[str, str],
) -> None:
    _pull_killed_at(build_env, "configure")
    cache = EnvironmentCache(Path(build_env["PYRO_CACHE_DIR"]))
    listed = json.loads(pyro_cli(build_env, "env", "list", "--json").stdout)
    base = next(e for e in listed if e["name"] == "debian:12-base")
    assert base["installed"] is False
    assert "interrupted" in base["problem"], base

    # A run needs it: the build starts over, saying what it cleans up first.
    done = pyro_cli(
        build_env, "run", "debian:12-base", "--", "sh", "-c", "command -v git || echo no-git"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "no-git\n"
    assert "phase=cleanup the last build of debian:12-base did not finish" in done.stderr
    for phase in ("phase=rootfs", "phase=configure", "phase=initramfs", "phase=done"):
        assert phase in done.stderr
    builds = cache.environments_dir / "debian-12-base" / "builds"
    assert [p.name for p in builds.iterdir() if p.name.startswith(".partial-")] == []

    inspected = json.loads(pyro_cli(build_env, "env", "inspect", "debian:12-base", "--json").stdout)
    assert inspected["installed"] is True and inspected["problem"] is None
    assert "python3-minimal" in inspected["manifest"]["packages"]
    assert inspected["manifest"]["kernel"]["package"].startswith("linux-image-")

    verified = pyro_cli(build_env, "env", "pull", "debian:12-base", "--no-prepare")
    assert verified.returncode == 0
    assert "phase=verify" in verified.stderr and "phase=rootfs" not in verified.stderr

    # Broken the way an interrupted write would break it: the next pull sees it
    # and rebuilds (the same build as above, so it is stopped as it says so).
    build_dir = Path(inspected["path"])
    (build_dir / "manifest.json").write_text("{")
    status = cache.status("debian:12-base")
    assert not status.installed and status.problem is not None
    assert "manifest unreadable" in status.problem
    said = _pull_killed_at(build_env, "repair")
    assert "phase=repair debian:12-base: manifest unreadable" in said


def test_a_failed_build_installs_nothing_and_the_next_pull_says_why(
    build_env: dict[str, str],
) -> None:
    broken = dict(build_env, PYRO_DEBIAN_MIRROR="file:///nonexistent-pyro-mirror")
    failed = pyro_cli(broken, "env", "pull", "debian:12-base", "--no-prepare")
    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr
    assert "debootstrap failed" in failed.stderr
    cache = EnvironmentCache(Path(build_env["PYRO_CACHE_DIR"]))
    status = cache.status("debian:12-base")
    assert not status.installed and status.build_dir is None
    assert status.problem is not None and "phase rootfs" in status.problem
    builds = cache.environments_dir / "debian-12-base" / "builds"
    assert list(builds.iterdir()) == []
    log = cache.environments_dir / "debian-12-base" / "last-build.log"
    assert f"Full log: {log}" in failed.stderr and log.is_file()
    # The next attempt says what happened before it starts over (and fails the same way).
    again = pyro_cli(broken, "env", "pull", "debian:12-base", "--no-prepare")
    assert "phase=cleanup the last build of debian:12-base did not finish" in again.stderr
    assert "debootstrap failed" in again.stderr


def test_env_list_shows_the_catalog_with_install_state(cli_env: dict[str, str]) -> None:
    listing = json.loads(pyro_cli(cli_env, "env", "list", "--json").stdout)
    names = [e["name"] for e in listing]
    assert names[:3] == ["debian:12-base", "debian:12", "debian:12-build"]  # then pulled images
    assert next(e for e in listing if e["name"] == "debian:12")["installed"] is True
    human = pyro_cli(cli_env, "env", "list").stdout
    assert "debian:12-build" in human and "NAME" in human
