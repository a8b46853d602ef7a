"""A real ``pyro server`` on 127.0.0.1 (a random port), its tokens, and clients of it."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp import Pyro, host_tools
from pyro_mcp.transport import RemoteTransport
from tests.conftest import leaked_processes

START_TIMEOUT = 60.0


def pyro_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyro_mcp.cli.main", *args]


@dataclass
class RemoteServer:
    """One ``pyro server serve`` process over ``state_dir``, and its tokens."""

    state_dir: Path
    cache_dir: Path
    log: Path
    flags: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    transports: list[RemoteTransport] = field(default_factory=list)
    url: str = ""
    process: subprocess.Popen[str] | None = None

    # The server's own environment, taken when it is made: the tests around it
    # run as clients, with QEMU hidden (see ``client_without_qemu``).
    base_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def env(self) -> dict[str, str]:
        paths = {"PYRO_HOME": str(self.state_dir), "PYRO_CACHE_DIR": str(self.cache_dir)}
        return {**self.base_env, **paths}

    def start(self) -> None:
        self.process, self.url = start(self.env, self.log, *self.flags)

    def stop(self) -> None:
        for transport in self.transports:
            transport.close()
        self.transports.clear()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.process = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``pyro ARGS`` on the server's machine (its PYRO_HOME and cache)."""
        return subprocess.run(
            pyro_command(*args), env=self.env, capture_output=True, text=True, check=check
        )

    def token(self, name: str, *flags: str) -> str:
        done = self.cli("server", "token", "create", name, "--json", *flags)
        created = json.loads(done.stdout)
        assert created["name"] == name
        self.tokens[name] = created["token"]
        return str(created["token"])

    def sdk(self, name: str, **options: Any) -> Pyro:
        transport = RemoteTransport(self.url, self.tokens[name], **options)
        self.transports.append(transport)
        return Pyro(transport=transport)

    def cleanup(self) -> None:
        """Delete every guest this server's engine made; none may outlive it."""
        local = Pyro(state_dir=self.state_dir, cache_dir=self.cache_dir)
        for workspace in local.list_workspaces()["workspaces"]:
            local.delete_workspace(workspace["workspace_id"])
        for record in local.list_vms():
            local.delete_vm(record["vm_id"])
        assert leaked_processes(self.state_dir) == []


def start(env: dict[str, str], log: Path, *flags: str) -> tuple[subprocess.Popen[str], str]:
    """``pyro server serve --listen 127.0.0.1:0 --json``; the process and its URL."""
    with log.open("a") as stderr:
        process = subprocess.Popen(
            pyro_command("server", "serve", "--listen", "127.0.0.1:0", "--json", *flags),
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(START_TIMEOUT):
            process.kill()
            process.wait()
            process.stdout.close()
            raise AssertionError(f"pyro server did not start: {log.read_text()[-2000:]}")
    line = process.stdout.readline()
    try:
        return process, str(json.loads(line)["url"])
    except (ValueError, KeyError):
        process.kill()
        process.wait()
        process.stdout.close()
        raise AssertionError(f"pyro server said {line!r}: {log.read_text()[-2000:]}") from None


@pytest.fixture(scope="session")
def path_without_qemu(tmp_path_factory: pytest.TempPathFactory) -> str:
    """PATH as it is, but every folder holding a QEMU program stands in as a copy
    of its links without them: what a laptop client has."""
    shadow_root = tmp_path_factory.mktemp("no-qemu")
    folders = []
    for index, folder in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        place = Path(folder)
        if not place.is_dir() or not any(place.glob("qemu-*")):
            folders.append(folder)
            continue
        shadow = shadow_root / str(index)
        shadow.mkdir()
        for program in place.iterdir():
            if not program.name.startswith("qemu"):
                (shadow / program.name).symlink_to(program)
        folders.append(str(shadow))
    return os.pathsep.join(folders)


@pytest.fixture(autouse=True)
def client_without_qemu(path_without_qemu: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here is a client of a server: it runs with QEMU off PATH (and
    out of the system folders pyro also looks in) and PYRO_HOME/PYRO_CACHE_DIR
    pointing nowhere, so nothing it does can quietly fall back to a local engine."""
    monkeypatch.setenv("PATH", path_without_qemu)
    monkeypatch.setattr(host_tools, "SYSTEM_DIRS", ())
    # Programs started from here (the stdio bridge, chat hosts) look in the
    # system folders too: PYRO_QEMU naming nothing makes QEMU missing for them.
    monkeypatch.setenv("PYRO_QEMU", "/nonexistent/qemu-system-x86_64")
    for tool in host_tools.RUNTIME_TOOLS:
        assert host_tools.find(tool) is None
    monkeypatch.setenv("PYRO_HOME", "/nonexistent/pyro-client-state")
    monkeypatch.setenv("PYRO_CACHE_DIR", "/nonexistent/pyro-client-cache")


@contextlib.contextmanager
def serving(
    folder: Path,
    cache_dir: Path,
    tokens: dict[str, list[str]],
    base_env: dict[str, str] | None = None,
) -> Iterator[RemoteServer]:
    """A running server over ``folder`` with these tokens (name: create flags);
    stopped, and its guests deleted, afterwards. ``base_env``: the server's
    environment (default: this process's now; inside a test here that has QEMU
    hidden, so pass another server's)."""
    remote = RemoteServer(folder / "state", cache_dir, folder / "server.log")
    if base_env is not None:
        remote.base_env = dict(base_env)
    for name, flags in tokens.items():
        remote.token(name, *flags)
    remote.start()
    try:
        yield remote
    finally:
        remote.stop()
        remote.cleanup()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, warm_environment: dict[str, Any]
) -> Iterator[RemoteServer]:
    """A server with two principals, alice and bob (bob may run one workspace)."""
    tokens = {"alice": [], "bob": ["--max-running", "1"]}
    with serving(tmp_path_factory.mktemp("server"), cache_dir, tokens) as remote:
        yield remote


@pytest.fixture
def git_project(tmp_path: Path) -> Path:
    """A local Git checkout: two tracked files, one ignored, one untracked."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "app.py").write_text("print('hi')\n")
    (root / ".gitignore").write_text("*.log\n")
    git = ["git", "-C", str(root), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    (root / "debug.log").write_text("ignored\n")
    (root / "notes.txt").write_text("untracked\n")
    return root
