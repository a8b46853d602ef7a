"""Shared fixtures. VM tests share one built environment (in the real cache)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp import Pyro
from pyro_mcp.config import default_paths
from pyro_mcp.environments.cache import EnvironmentCache, InstalledEnvironment
from tests.egress.servers import LocalCA

TEST_ENVIRONMENT = "debian:12"


def _progress(message: str) -> None:
    sys.stderr.write(f"[env] {message}\n")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return default_paths().cache_dir


@pytest.fixture(scope="session")
def built_environment(cache_dir: Path) -> InstalledEnvironment:
    """debian:12, built once per machine (a later build waits on the first's lock)."""
    return EnvironmentCache(cache_dir).ensure(TEST_ENVIRONMENT, _progress)


@pytest.fixture(scope="session")
def warm_environment(
    cache_dir: Path,
    built_environment: InstalledEnvironment,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """debian:12's warm snapshots, with and without a NIC: the suite runs warm by default.

    Taken once per machine and reused while valid; xdist workers that get here
    at once share the snapshot lock (one prepares, the others wait and reuse it).
    Tests of the cold path set PYRO_WARM=0 or use a stale snapshot of their own.
    """
    state = tmp_path_factory.mktemp("prepare-state")
    return Pyro(state_dir=state, cache_dir=cache_dir, progress=_progress).prepare(
        TEST_ENVIRONMENT, network=True
    )


@pytest.fixture
def private_cache(tmp_path: Path, cache_dir: Path, warm_environment: dict[str, Any]) -> Path:
    """A cache of its own (no warm snapshots yet) that shares the built environments.

    For tests that damage, age or race snapshots without touching the suite's.
    """
    private = tmp_path / "cache"
    private.mkdir()
    (private / "environments").symlink_to(cache_dir / "environments")
    return private


def delete_everything(client: Pyro) -> None:
    """Delete every workspace and VM a test left in ``client``'s state."""
    for workspace in client.list_workspaces()["workspaces"]:
        client.delete_workspace(workspace["workspace_id"])
    for record in client.list_vms():
        client.delete_vm(record["vm_id"])


@pytest.fixture
def private_pyro(private_cache: Path, state_dir: Path) -> Iterator[Pyro]:
    """An SDK object over ``private_cache``: its warm snapshots are its own.

    For tests whose guests must map no file another test's guests map.
    """
    client = Pyro(state_dir=state_dir, cache_dir=private_cache)
    yield client
    delete_everything(client)
    assert leaked_processes(state_dir) == []


@pytest.fixture
def test_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalCA:
    """A CA for local TLS test servers, trusted by this process and the VMs it starts.

    Its bundle (the system's CAs plus it) is SSL_CERT_FILE: the egress proxy
    verifies the servers with it, and guests get it as the host's CA bundle.
    """
    ca = LocalCA(tmp_path / "test-ca")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.bundle))
    return ca


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def pyro(state_dir: Path, cache_dir: Path, warm_environment: dict[str, Any]) -> Iterator[Pyro]:
    """An SDK object with its own state; fails the test if a VM process outlives it."""
    client = Pyro(state_dir=state_dir, cache_dir=cache_dir)
    yield client
    delete_everything(client)
    assert leaked_processes(state_dir) == []


@pytest.fixture
def cli_env(
    state_dir: Path, cache_dir: Path, warm_environment: dict[str, Any]
) -> Iterator[dict[str, str]]:
    """Environment variables for running the real `pyro` CLI against this state."""
    env = dict(os.environ, PYRO_HOME=str(state_dir), PYRO_CACHE_DIR=str(cache_dir))
    yield env
    # Remove what a failed test left, then prove no VM process outlives it.
    if state_dir.exists():
        delete_everything(Pyro(state_dir=state_dir, cache_dir=cache_dir))
    assert leaked_processes(state_dir) == []


def leaked_processes(state_dir: Path) -> list[str]:
    """QEMU or supervisor processes still running for VMs under ``state_dir``."""
    leaked = []
    marker = str(state_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if marker in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z":
            leaked.append(cmdline.replace(b"\0", b" ").decode(errors="replace")[:200])
    return leaked


GUEST_LOG_TAIL_BYTES = 6000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's guests are still there: put their console and supervisor
    log tails into its report, before the fixtures delete them."""
    outcome = yield
    report = outcome.get_result()
    if report.when not in ("setup", "call") or not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    roots = {Path(funcargs["state_dir"])} if "state_dir" in funcargs else set()
    for value in funcargs.values():
        if isinstance(value, Pyro):
            roots.add(value.paths.state_dir)
    for root in sorted(roots):
        for vm_dir in sorted((root / "vms").glob("*")):
            for name in ("console.log", "supervisor.log", "qemu.log"):
                path = vm_dir / name
                if path.is_file() and path.stat().st_size:
                    with path.open("rb") as handle:
                        handle.seek(max(0, path.stat().st_size - GUEST_LOG_TAIL_BYTES))
                        tail = handle.read().decode("utf-8", errors="replace")
                    report.sections.append((f"{vm_dir.name} {name} (last lines)", tail))


def _user_state_entries() -> set[str]:
    state = default_paths().state_dir
    return {
        f"{kind}/{entry.name}"
        for kind in ("vms", "workspaces")
        if (state / kind).is_dir()
        for entry in (state / kind).iterdir()
    }


@pytest.fixture(scope="session", autouse=True)
def _the_users_state_is_left_alone() -> Iterator[None]:
    """No test may create VMs or workspaces in the user's own state directory.

    Every test gets a state directory of its own; a server started by a client
    that drops the environment (as MCP stdio clients do) would otherwise use,
    and on a new machine build into, the user's.
    """
    before = _user_state_entries()
    yield
    assert _user_state_entries() - before == set(), (
        f"tests created VMs or workspaces under {default_paths().state_dir}"
    )
