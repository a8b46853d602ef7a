"""Building an environment for real: debootstrap, kernel, initramfs, manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pyro_mcp.environments.cache import EnvironmentCache
from tests.cli_helper import pyro_cli

pytestmark = pytest.mark.vm


def test_run_builds_a_missing_or_broken_environment_with_progress(
    cli_env: dict[str, str], cache_dir: Path
) -> None:
    cache = EnvironmentCache(cache_dir)
    before = cache.status("debian:12-base")
    if before.build_dir is not None:
        # Break the installed build the way an interrupted write would.
        (before.build_dir / "manifest.json").write_text("{")
        assert not cache.status("debian:12-base").installed

    done = pyro_cli(
        cli_env, "run", "debian:12-base", "--", "sh", "-c", "command -v git || echo no-git"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "no-git\n"
    for phase in ("phase=rootfs", "phase=initramfs", "phase=done"):
        assert phase in done.stderr

    inspected = json.loads(pyro_cli(cli_env, "env", "inspect", "debian:12-base", "--json").stdout)
    assert inspected["installed"] is True
    assert "python3-minimal" in inspected["manifest"]["packages"]
    assert inspected["manifest"]["kernel"]["package"].startswith("linux-image-")
    assert inspected["path"] != (str(before.build_dir) if before.build_dir else None)

    verified = pyro_cli(cli_env, "env", "pull", "debian:12-base")
    assert verified.returncode == 0
    assert "phase=verify" in verified.stderr and "phase=rootfs" not in verified.stderr

    if before.build_dir is not None:
        shutil.rmtree(before.build_dir, ignore_errors=True)  # a rebuild may have pruned it


def test_env_list_shows_the_catalog_with_install_state(cli_env: dict[str, str]) -> None:
    listing = json.loads(pyro_cli(cli_env, "env", "list", "--json").stdout)
    assert [e["name"] for e in listing] == ["debian:12-base", "debian:12", "debian:12-build"]
    assert next(e for e in listing if e["name"] == "debian:12")["installed"] is True
    human = pyro_cli(cli_env, "env", "list").stdout
    assert "debian:12-build" in human and "NAME" in human
