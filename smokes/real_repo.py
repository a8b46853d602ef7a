"""Real-repo qualification: projects nobody here wrote, installed, tested, patched, exported.

For each pinned project (a pure-Python one and one with a C extension):

1. its sdist comes from the package index the host is set up for (`pip
   download`), and becomes a *messy* local checkout: the sdist committed, plus
   ignored build output and logs, bytecode, an untracked file and a tracked
   file deleted from the working tree;
2. `pyro mcp serve --profile workspace-full` starts in that checkout (only
   Git-tracked files reach the guest), and again with `--repo-url file://...`;
3. in a `debian:12-build` workspace with egress: a venv, the project and
   pytest installed from the index, the project's own tests run and pass, a
   patch applied, the tests rerun, the diff exported and checked on the host
   with `git apply --check`;
4. a service loop: an HTTP server started as a service with readiness and
   probed from the host through a published port.

Each step is timed. A failure names who is at fault: the host (index, Git),
the project (install, its tests) or the guest runtime (pyro, the VM).

Without a reachable package index, the steps that need it are SKIPPED loudly
and the rest still run.

    uv run python -m smokes.real_repo                  # both projects
    uv run python -m smokes.real_repo more-itertools
"""

from __future__ import annotations

import difflib
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import anyio

from mcp import Client
from smokes.common import (
    Scenario,
    SmokeFailure,
    call,
    check,
    git,
    mcp_session,
    private_home,
    run_all,
)

ENVIRONMENT = "debian:12-build"


@dataclass(frozen=True)
class Project:
    name: str
    version: str
    module: str  # the importable package the patch touches
    init: str  # its __init__.py, relative to the checkout
    tests: str  # what pytest runs
    min_passed: int  # at least this many tests must pass
    proof: str = ""  # Python that must run after the install (a built C extension)


PROJECTS = {
    "more-itertools": Project(
        "more-itertools", "10.5.0", "more_itertools", "more_itertools/__init__.py", "tests", 500
    ),
    "markupsafe": Project(
        "markupsafe",
        "3.0.2",
        "markupsafe",
        "src/markupsafe/__init__.py",
        "tests",
        70,
        proof="import markupsafe._speedups",  # the C extension, compiled in the guest
    ),
}

MESS_GITIGNORE = "build/\n*.egg-info/\n.venv/\n*.log\n*.so\n__pycache__/\n.pytest_cache/\n"


def qualify(project: Project, s: Scenario) -> None:
    with tempfile.TemporaryDirectory(prefix="pyro-real-") as tmp, private_home() as env:
        work = Path(tmp)
        with s.step("pip download the sdist", "host"):
            sdist = fetch_sdist(project, work / "dist")
        if sdist is None:
            s.skipped.append(
                f"{project.name}: the package index is not reachable from the host; "
                "install/test steps not run"
            )
            s.result = "SKIPPED: no package index"
            return
        with s.step("make a messy checkout", "host"):
            checkout, tracked = messy_checkout(sdist, work)
        anyio.run(lambda: from_checkout(project, env, checkout, tracked, s))
        anyio.run(lambda: from_repo_url(env, checkout, tracked, work, s))


def fetch_sdist(project: Project, dest: Path) -> Path | None:
    """The project's sdist from the index the host's pip is set up for; None if unreachable."""
    dest.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip"]
    if subprocess.run([*pip, "--version"], capture_output=True, check=False).returncode != 0:
        pip = ["python3", "-m", "pip"]
    done = subprocess.run(
        [
            *pip,
            "download",
            "--no-binary",
            ":all:",
            "--no-deps",
            "-d",
            str(dest),
            f"{project.name}=={project.version}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        if any(w in done.stderr for w in ("NewConnectionError", "Max retries", "No matching")):
            return None
        raise SmokeFailure(said[-1] if said else "pip download failed")
    archives = sorted(dest.glob("*.tar.gz"))
    check(len(archives) == 1, f"expected one sdist, got {archives}")
    return archives[0]


def messy_checkout(sdist: Path, work: Path) -> tuple[Path, int]:
    """The sdist as a Git checkout with what real ones carry beside their tracked files."""
    with tarfile.open(sdist) as tar:
        tar.extractall(work / "src", filter="data")
    (top,) = list((work / "src").iterdir())
    checkout = work / "checkout"
    shutil.move(str(top), checkout)
    (checkout / ".gitignore").write_text(MESS_GITIGNORE)
    (checkout / "DELETED-LATER.txt").write_text("tracked, then deleted from the working tree\n")
    git(work, "init", "-q", str(checkout))
    git(checkout, "add", ".")
    git(checkout, "commit", "-qm", "sdist")
    tracked = len(git(checkout, "ls-files").splitlines())
    # The mess: ignored, generated, untracked, missing and unreadable files.
    (checkout / "DELETED-LATER.txt").unlink()
    (checkout / "build" / "lib").mkdir(parents=True)
    (checkout / "build" / "lib" / "junk.so").write_bytes(os.urandom(4096))
    (checkout / "debug.log").write_text("old log\n" * 1000)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(checkout)], check=False, capture_output=True
    )
    (checkout / "my-notes.txt").write_text("untracked notes, never seeded\n")
    (checkout / "secret.key").write_text("unreadable for anyone but root\n")
    os.chmod(checkout / "secret.key", 0)
    return checkout, tracked


async def from_checkout(
    project: Project, env: dict[str, str], checkout: Path, tracked: int, s: Scenario
) -> None:
    async with mcp_session(
        env, checkout, "--profile", "workspace-full", "--environment", ENVIRONMENT
    ) as client:
        with s.step("workspace_create with egress to the package index only", "guest runtime"):
            ws = await call(
                client,
                "workspace_create",
                network_policy="egress+published-ports",
                allow_package_index=True,
                name=project.name,
            )
            check(ws["egress"]["mode"] == "allow-list", str(ws["egress"]))
        wid = ws["workspace_id"]
        try:
            with s.step("only tracked files seeded; the missing one reported", "guest runtime"):
                seed = ws["seed"]
                check(
                    seed["file_count"] == tracked - 1 and seed["skipped_unreadable"] == 1,
                    f"seeded {seed['file_count']} of {tracked} tracked files: {seed}",
                )
                listing = await call(client, "workspace_file_list", workspace_id=wid)
                names = {e["path"].removeprefix("/workspace/") for e in listing["entries"]}
                untracked = names & {"build", "debug.log", "my-notes.txt", "secret.key"}
                check(not untracked, f"untracked files seeded: {untracked}")
            await install_and_test(client, wid, project, s)
            await nothing_but_the_index(client, wid, s)
            await patch_and_export(client, wid, project, checkout, s)
            await service_loop(client, wid, s)
        finally:
            await call(client, "workspace_delete", workspace_id=wid)


async def install_and_test(client: Client, wid: str, project: Project, s: Scenario) -> None:
    with s.step("venv", "guest runtime"):
        done = await call(
            client,
            "workspace_exec",
            workspace_id=wid,
            command="python3 -m venv .venv",
            timeout_seconds=300,
        )
        check(done["exit_code"] == 0, done["_text"][-800:])
    with s.step("pip install -e . pytest (from the index, in the guest)", "project"):
        done = await call(
            client,
            "workspace_exec",
            workspace_id=wid,
            command=".venv/bin/pip install --progress-bar off -q -e . pytest",
            timeout_seconds=1200,
        )
        check(done["exit_code"] == 0, done["_text"][-1500:])
    if project.proof:
        with s.step(f"python -c {project.proof!r}", "project"):
            done = await call(
                client,
                "workspace_exec",
                workspace_id=wid,
                command=f".venv/bin/python -c {shlex.quote(project.proof)}",
            )
            check(done["exit_code"] == 0, done["_text"][-800:])
    with s.step("its own test suite", "project"):
        done = await call(
            client,
            "workspace_exec",
            workspace_id=wid,
            command=f".venv/bin/python -m pytest -q -p no:cacheprovider {project.tests}",
            timeout_seconds=1800,
        )
        check(done["exit_code"] == 0, done["_text"][-1500:])
        passed = _passed(done["stdout"])
        check(passed >= project.min_passed, f"only {passed} tests passed")
    s.result = f"{project.name} {project.version}: {passed} tests passed in the guest"


async def nothing_but_the_index(client: Client, wid: str, s: Scenario) -> None:
    """The install went through the egress proxy; any other host is refused."""
    with s.step("another host is refused by the egress policy", "guest runtime"):
        done = await call(
            client,
            "workspace_exec",
            workspace_id=wid,
            command='python3 -c "import urllib.request; '
            "urllib.request.urlopen('https://example.com/', timeout=20)\"",
        )
        check(
            done["exit_code"] != 0 and "403" in done["stderr"],
            f"example.com was not refused: {done['_text'][-400:]}",
        )
        summary = await call(client, "workspace_summary", workspace_id=wid)
        egress = [c for c in summary["host_crossings"] if c["kind"] == "egress"]
        allowed = sum(c["connections"] for c in egress if c["allowed"])
        check(allowed > 0, f"no allowed connection journalled: {egress}")
        check(any(c["host"] == "example.com" and not c["allowed"] for c in egress), str(egress))
    s.result += f"; {allowed} index connections, everything else refused"


def _passed(output: str) -> int:
    for line in reversed(output.splitlines()):
        words = line.replace(",", " ").split()
        if "passed" in words:
            return int(words[words.index("passed") - 1])
    return 0


async def patch_and_export(
    client: Client, wid: str, project: Project, checkout: Path, s: Scenario
) -> None:
    # As the model would: read the file, write a unified diff against it.
    init = project.init
    current = await call(client, "workspace_file_read", workspace_id=wid, path=init)
    before = current["content"].splitlines(keepends=True)
    after = [*before, "\n", "PYRO_QUALIFIED = True  # added by the qualification smoke\n"]
    patch = "".join(difflib.unified_diff(before, after, f"a/{init}", f"b/{init}"))
    with s.step("workspace_patch_apply", "guest runtime"):
        await call(client, "workspace_patch_apply", workspace_id=wid, patch=patch)
    with s.step("tests after the patch", "project"):
        done = await call(
            client,
            "workspace_exec",
            workspace_id=wid,
            command=f".venv/bin/python -c 'import {project.module} as m; assert m.PYRO_QUALIFIED' "
            f"&& .venv/bin/python -m pytest -q -x -p no:cacheprovider {project.tests}",
            timeout_seconds=1800,
        )
        check(done["exit_code"] == 0, done["_text"][-1500:])
    with s.step("workspace_diff", "guest runtime"):
        diff = await call(client, "workspace_diff", workspace_id=wid, format="patch")
        paths = [c["path"] for c in diff["changes"]]
        check(paths == [init], f"the review shows {paths} for a one-line patch")
    with s.step("git apply --check of the exported patch", "host"):
        target = checkout / "qualification.patch"
        target.write_text(diff["patch"])
        git(checkout, "apply", "--check", str(target))
    s.result += f"; 1-line patch reviewed alone ({diff['ignored_count']} ignored paths left out)"


async def service_loop(client: Client, wid: str, s: Scenario) -> None:
    with s.step("service with readiness and a published port", "guest runtime"):
        service = await call(
            client,
            "service_start",
            workspace_id=wid,
            service_name="docs",
            command=".venv/bin/python -m http.server 8000",
            ready_http="http://127.0.0.1:8000/",
            published_ports=["8000"],
        )
        check(service["state"] == "running", str(service))
        port = service["published_ports"][0]["host_port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/pyproject.toml", timeout=30) as r:
            check(b"[build-system]" in r.read(), "the served pyproject.toml")
        await call(client, "service_stop", workspace_id=wid, service_name="docs")
    s.result += f"; served through 127.0.0.1:{port}"


async def from_repo_url(
    env: dict[str, str], checkout: Path, tracked: int, work: Path, s: Scenario
) -> None:
    async with mcp_session(
        env, work, "--repo-url", f"file://{checkout}", "--environment", ENVIRONMENT
    ) as client:
        with s.step("workspace_create from --repo-url", "guest runtime"):
            ws = await call(client, "workspace_create")
        try:
            check(
                ws["seed"]["file_count"] == tracked,
                f"a clone seeds every tracked file: {ws['seed']}",
            )
            done = await call(
                client,
                "workspace_exec",
                workspace_id=ws["workspace_id"],
                command="test -e DELETED-LATER.txt && test ! -e my-notes.txt",
            )
            check(done["exit_code"] == 0, done["_text"])
        finally:
            await call(client, "workspace_delete", workspace_id=ws["workspace_id"])
    s.result += "; --repo-url seeds the committed tree"


SCENARIOS = {
    name: (lambda p: lambda s: qualify(p, s))(project) for name, project in PROJECTS.items()
}

if __name__ == "__main__":
    sys.exit(run_all(SCENARIOS, sys.argv[1:]))
