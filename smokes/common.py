"""What every smoke shares: an MCP session against `pyro mcp serve`, timing, one line each.

A smoke drives the real server over stdio with the MCP Python SDK's client, as
a chat host would. It uses its own PYRO_HOME (so it cannot touch the user's
workspaces and can prove it left no guest running) and the shared cache of
built environments and warm snapshots.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parents[1]


class SmokeFailure(Exception):
    """A step did not do what the recipe says; the message names the step."""


@dataclass
class Scenario:
    """One smoke's running record: its steps with their times, and what it exported."""

    name: str
    steps: list[tuple[str, float]] = field(default_factory=list)
    result: str = ""
    skipped: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, label: str, at_fault: str | None = None) -> Iterator[None]:
        """Time a step; a failure in it names the step (and who is at fault, if given)."""
        started = time.monotonic()
        prefix = f"[{at_fault} at fault] " if at_fault else ""
        try:
            yield
        except Exception as exc:
            inner = _innermost(exc)
            said = inner if isinstance(inner, SmokeFailure) else f"{type(inner).__name__}: {inner}"
            raise SmokeFailure(f"{prefix}{label}: {said}") from exc
        self.steps.append((label, time.monotonic() - started))


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


@contextlib.contextmanager
def private_home() -> Iterator[dict[str, str]]:
    """An environment with a fresh PYRO_HOME (the shared cache kept); checked clean after."""
    with tempfile.TemporaryDirectory(prefix="pyro-smoke-") as tmp:
        env = dict(os.environ)
        env["PYRO_HOME"] = str(Path(tmp) / "home")
        env.setdefault("PYRO_CACHE_DIR", str(Path.home() / ".cache" / "pyro"))
        try:
            yield env
        finally:
            leftovers = qemu_processes(env["PYRO_HOME"])
            for pid in leftovers:
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
        if leftovers:
            raise SmokeFailure(f"guests left running after the scenario: pids {leftovers}")


def qemu_processes(marker: str) -> list[int]:
    """QEMU processes whose command line mentions ``marker`` (a PYRO_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "qemu-system" in cmdline and marker in cmdline:
            found.append(int(entry.name))
    return found


@asynccontextmanager
async def mcp_session(env: dict[str, str], cwd: Path, *args: str) -> AsyncIterator[Client]:
    """`pyro mcp serve ARGS` started in ``cwd`` over stdio, as a chat host starts it."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pyro_mcp.cli.main", "mcp", "serve", *args],
        env=env,
        cwd=str(cwd),
    )
    async with Client(params, read_timeout_seconds=900) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must succeed; returns its structured content (and ``_text``)."""
    result = await client.call_tool(tool, arguments)
    text = " ".join(b.text for b in result.content if b.type == "text")
    if result.is_error:
        raise SmokeFailure(f"{tool} failed: {text[:600]}")
    data = dict(result.structured_content or {})
    data["_text"] = text
    return data


async def call_error(client: Client, tool: str, **arguments: Any) -> str:
    """A tool call that must fail; returns the error the model sees."""
    result = await client.call_tool(tool, arguments)
    text = " ".join(b.text for b in result.content if b.type == "text")
    if not result.is_error:
        raise SmokeFailure(f"{tool} should have failed, returned: {text[:300]}")
    return text


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=smoke", "-c", "user.email=smoke@invalid", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SmokeFailure(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def make_repo(root: Path, files: dict[str, str]) -> Path:
    """A Git checkout holding ``files``, committed."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(root.parent, "init", "-q", str(root))
    git(root, "add", ".")
    git(root, "commit", "-qm", "fixture")
    return root


def run_all(scenarios: Mapping[str, Callable[[Scenario], None]], names: list[str]) -> int:
    """Run the chosen scenarios; one line each (PASS/FAIL, time, result); exit status."""
    chosen = names or list(scenarios)
    unknown = [n for n in chosen if n not in scenarios]
    if unknown:
        print(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(scenarios)}")
        return 2
    failed = 0
    for name in chosen:
        scenario = Scenario(name)
        started = time.monotonic()
        try:
            scenarios[name](scenario)
        except Exception as exc:  # the scenario's failure, whatever wraps it
            failed += 1
            took = time.monotonic() - started
            print(f"FAIL {name:<28} {took:6.1f} s  {_innermost(exc)}", flush=True)
            _print_steps(scenario)
            continue
        took = time.monotonic() - started
        word = "SKIP" if scenario.skipped and not scenario.steps[2:] else "PASS"
        print(f"{word} {name:<28} {took:6.1f} s  {scenario.result}", flush=True)
        for what in scenario.skipped:
            print(f"     SKIPPED (loudly): {what}", flush=True)
        if os.environ.get("PYRO_SMOKE_VERBOSE"):
            _print_steps(scenario)
    return 1 if failed else 0


def _innermost(exc: BaseException) -> BaseException:
    """The failure inside the task groups an MCP session wraps it in."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _print_steps(scenario: Scenario) -> None:
    for label, seconds in scenario.steps:
        print(f"       {seconds:6.1f} s  {label}", flush=True)
