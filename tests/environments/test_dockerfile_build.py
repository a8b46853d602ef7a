"""`pyro env build`: Dockerfiles built inside real guests, from the curated
debian:12, with apt through the egress proxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

from pyro_mcp import Pyro
from pyro_mcp.environments import builder, dockerfile
from pyro_mcp.errors import EnvironmentBuildError, InvalidArgument, NotFound
from pyro_mcp.hosts import service as host_service
from pyro_mcp.hosts.configs import Entry
from tests.cli_helper import pyro_cli
from tests.conftest import leaked_processes
from tests.mcp.conftest import call, mcp_client

pytestmark = pytest.mark.vm

TOOL_DOCKERFILE = """\
# a toolchain the curated image lacks (jq), a project, a non-root user
FROM debian:12
ARG TOOL=jq
ENV APP_HOME=/opt/app \\
    MODE=test
RUN apt-get update -q && \\
    apt-get install -y -q --no-install-recommends $TOOL && \\
    rm -rf /var/lib/apt/lists/*
RUN useradd -m -u 1000 app && date +%s%N > /etc/built-at
WORKDIR $APP_HOME
COPY --chown=app:app project/ ./
USER app
RUN python3 -m unittest -q 2>&1 && echo "built as $(id -un) in $(pwd)"
CMD ["python3", "-m", "unittest"]
"""

TEST_PY = """\
import json, os, subprocess, unittest

class Tool(unittest.TestCase):
    def test_jq_reads_the_config(self):
        out = subprocess.run(["jq", "-r", ".name", "config.json"], capture_output=True, text=True)
        self.assertEqual(out.stdout.strip(), "demo")

    def test_env_and_user(self):
        self.assertEqual(os.environ["MODE"], "test")
        self.assertEqual(os.getuid(), 1000)
"""


def own_cache(cache: Path, shared: Path) -> Path:
    """A cache of its own that sees the shared debian:12, kernels and runtime drive."""
    (cache / "environments").mkdir(parents=True)
    for name in ("kernels", "runtime", "warm-builder"):
        (shared / name).mkdir(parents=True, exist_ok=True)
        (cache / name).symlink_to(shared / name)
    (cache / "environments" / "debian-12").symlink_to(shared / "environments" / "debian-12")
    return cache


@pytest.fixture
def pyro(tmp_path: Path, cache_dir: Path, lines: list[str]) -> Iterator[Pyro]:
    cache = own_cache(tmp_path / "cache", cache_dir)
    state = tmp_path / "state"
    client = Pyro(state_dir=state, cache_dir=cache, progress=lines.append)
    yield client
    for workspace in client.list_workspaces()["workspaces"]:
        client.delete_workspace(workspace["workspace_id"])
    assert leaked_processes(state) == []


@pytest.fixture
def lines() -> list[str]:
    return []


def project(root: Path, dockerfile_text: str = TOOL_DOCKERFILE) -> Path:
    (root / "project").mkdir(parents=True)
    (root / "project" / "test_tool.py").write_text(TEST_PY)
    (root / "project" / "config.json").write_text(json.dumps({"name": "demo"}))
    (root / "project" / "notes.secret").write_text("stays out\n")
    (root / ".dockerignore").write_text("**/*.secret\n")
    (root / "Dockerfile").write_text(dockerfile_text)
    return root


def test_a_dockerfile_builds_a_toolchain_environment_and_rebuilds_from_the_cache(
    pyro: Pyro, tmp_path: Path, warm_environment: dict[str, Any], lines: list[str]
) -> None:
    context = project(tmp_path / "ctx")
    mirror = urlsplit(builder.debian_mirror()).hostname
    assert mirror
    first = pyro.build_environment("tool:1", context=context, allow_hosts=[mirror])
    assert first["kind"] == "image" and first["installed"]
    settings = first["image"]["settings"]
    assert settings["user"] == "app" and settings["working_dir"] == "/opt/app"
    assert settings["env"]["MODE"] == "test" and settings["cmd"][0] == "python3"
    # Output streamed line by line, with the step number.
    assert any(line == "step 8/9: | built as app in /opt/app" for line in lines), lines
    assert any(line.startswith("step 3/9: | ") and "jq" in line for line in lines)

    ws = pyro.create_workspace(environment="tool:1")["workspace_id"]
    ran = pyro.exec_workspace(
        ws, "cd /opt/app && python3 -m unittest -v 2>&1; id -un; ls /opt/app; cat /etc/built-at"
    )
    assert ran["exit_code"] == 0, ran
    assert "Ran 2 tests" in ran["stdout"] and "OK" in ran["stdout"]
    listing = ran["stdout"].split("OK", 1)[1].split()
    assert listing[0] == "app" and "notes.secret" not in listing and "config.json" in listing
    built_at = listing[-1]
    # Everything else works on it: fork, suspend and resume, reset.
    fork = pyro.fork_workspace(ws)["forks"][0]["workspace_id"]
    assert pyro.exec_workspace(fork, "id -un; jq -n 1")["stdout"] == "app\n1\n"
    pyro.delete_workspace(fork)
    pyro.stop_workspace(ws)
    pyro.start_workspace(ws)
    pyro.reset_workspace(ws)
    assert pyro.exec_workspace(ws, "id -un && echo $MODE")["stdout"] == "app\ntest\n"
    pyro.delete_workspace(ws)

    # Edit the last line: only it runs again (the apt and useradd steps do not).
    lines.clear()
    edited = TOOL_DOCKERFILE.replace('CMD ["python3", "-m", "unittest"]', 'CMD ["sh"]\nLABEL v=2')
    (context / "Dockerfile").write_text(edited)
    started = time.monotonic()
    second = pyro.build_environment("tool:1", context=context, allow_hosts=[mirror])
    rebuild = time.monotonic() - started
    assert second["image"]["settings"]["cmd"] == ["sh"]
    assert sum(line.endswith("(cached)") for line in lines) == 4, lines
    assert rebuild < first["seconds"] / 2, (rebuild, first["seconds"])
    ran = pyro.run_in_vm("tool:1", "cat /etc/built-at; jq --version", timeout_seconds=120)
    assert ran["stdout"].splitlines()[0] == built_at, ran
    # Nothing that writes changed: the same layer disks.
    assert [d["disk"] for d in second["layer_disks"]] == [d["disk"] for d in first["layer_disks"]]


def test_bad_dockerfiles_are_refused_with_their_line(tmp_path: Path) -> None:
    cases = {
        "FROM debian:12\nFROBNICATE x\n": (2, "unknown instruction"),
        "RUN true\n": (1, "before FROM"),
        "FROM debian:12\nHEALTHCHECK CMD true\n": (2, "health checks"),
        "FROM a\nFROM b\n": (2, "multi-stage"),
        "FROM debian:12\nCOPY --from=build /x /y\n": (2, "multi-stage"),
        "FROM debian:12\nADD https://example.org/x /x\n": (2, "URL"),
        'FROM debian:12\nRUN ["sh", "-c" "x"]\n': (2, "JSON array"),
        "# only a comment\n": (1, "no FROM"),
    }
    for text, (line, message) in cases.items():
        path = tmp_path / "Dockerfile"
        path.write_text(text)
        with pytest.raises(dockerfile.DockerfileError, match=message) as refused:
            dockerfile.parse(path)
        assert refused.value.line == line, (text, refused.value)
        assert f"Dockerfile:{line}:" in str(refused.value)
    path = tmp_path / "Dockerfile"
    path.write_text(
        'ARG BASE=debian:12\nFROM $BASE\nARG V=1\nENV A=${V:-x} B="two words" \\\n'
        "  C=${MISSING:-fallback}\nRUN echo \\$A\n"
    )
    parsed = dockerfile.parse(path, {"V": "9", "UNUSED": "1"})
    assert parsed.base == "debian:12" and parsed.unused_build_args == ["UNUSED"]
    env = parsed.steps[1].args["env"]
    assert env == {"A": "9", "B": "two words", "C": "fallback"}
    assert parsed.steps[2].args["argv"] == ["/bin/sh", "-c", "echo \\$A"]


def test_failing_hanging_and_escaping_steps_install_nothing(
    pyro: Pyro, tmp_path: Path, warm_environment: dict[str, Any], lines: list[str]
) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "ok.txt").write_text("ok\n")
    (tmp_path / "outside.txt").write_text("host file\n")
    (context / "link").symlink_to(tmp_path / "outside.txt")
    dockerfile_path = context / "Dockerfile"

    # A good build first: a failed rebuild of the same name leaves it in place.
    dockerfile_path.write_text("FROM debian:12\nCOPY ok.txt /ok.txt\n")
    pyro.build_environment("bad:1", context=context)

    for text, message in (
        ("FROM debian:12\nCOPY ../outside.txt /x\n", "outside the build context"),
        ("FROM debian:12\nCOPY link /x\n", "leads outside the build context"),
        ("FROM debian:12\nCOPY missing.txt /x\n", "is not in the build context"),
        ("FROM nothing-here:1\nRUN true\n", "nothing-here"),
    ):
        dockerfile_path.write_text(text)
        with pytest.raises((EnvironmentBuildError, InvalidArgument, NotFound), match=message):
            pyro.build_environment("bad:1", context=context)

    dockerfile_path.write_text(
        "FROM debian:12\nRUN echo step one\nRUN echo some output; echo more >&2; exit 3\n"
    )
    with pytest.raises(EnvironmentBuildError, match=r"line 3 .* exited 3") as failed:
        pyro.build_environment("bad:1", context=context)
    assert "some output" in str(failed.value) and "more" in str(failed.value)

    dockerfile_path.write_text("FROM debian:12\nRUN sleep 600 & sleep 600\n")
    started = time.monotonic()
    with pytest.raises(EnvironmentBuildError, match="ran longer than 10 s"):
        pyro.build_environment("bad:1", context=context, step_timeout_seconds=10)
    assert time.monotonic() - started < 120
    # Still the first build; its file is there.
    ran = pyro.run_in_vm("bad:1", "cat /ok.txt", timeout_seconds=120)
    assert ran["stdout"] == "ok\n"
    layers = Path(pyro.inspect_environment("bad:1")["layer_disks"][0]["disk"]).parent
    assert all(d.with_suffix(".json").exists() for d in layers.glob("*.qcow2"))


def test_the_cli_builds_with_build_args_and_says_what_is_wrong(
    tmp_path: Path, cache_dir: Path, warm_environment: dict[str, Any]
) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        'FROM debian:12\nARG WHO=nobody\nRUN echo "hello $WHO" > /hello\n'
    )
    cache = own_cache(tmp_path / "cache", cache_dir)
    env = dict(os.environ, PYRO_HOME=str(tmp_path / "state"), PYRO_CACHE_DIR=str(cache))
    built = pyro_cli(
        env,
        "env",
        "build",
        "hi:1",
        str(context),
        "--build-arg",
        "WHO=pyro",
        "--no-prepare",
        "--json",
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert json.loads(built.stdout)["name"] == "hi:1"
    assert "[build] step 2/2: RUN" in built.stderr
    ran = pyro_cli(env, "run", "hi:1", "--", "cat", "/hello")
    assert ran.stdout == "hello pyro\n", ran.stderr[-2000:]
    bad = pyro_cli(env, "env", "build", "hi:2", str(context), "--build-arg", "novalue")
    assert bad.returncode == 2 and "--build-arg" in bad.stderr
    missing = pyro_cli(env, "env", "build", "hi:2", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "is not a file" in missing.stderr
    assert leaked_processes(tmp_path / "state") == []


def test_a_workspace_saved_as_an_environment_keeps_what_it_installed(
    pyro: Pyro, tmp_path: Path, warm_environment: dict[str, Any], cache_dir: Path
) -> None:
    mirror = urlsplit(builder.debian_mirror()).hostname
    assert mirror
    ws = pyro.create_workspace(environment="debian:12", network=True, allow_hosts=[mirror])[
        "workspace_id"
    ]
    installed = pyro.exec_workspace(
        ws,
        "apt-get update -q && apt-get install -y -q --no-install-recommends jq"
        " && echo kept > /root/note && echo mine > /workspace/mine.txt",
        timeout_seconds=600,
    )
    assert installed["exit_code"] == 0, installed["stdout"][-3000:]

    # Running: it pauses for a moment and runs on; what it does after is not saved.
    saved = pyro.save_environment(ws, "saved:1")
    assert saved["kind"] == "image" and saved["installed"] and saved["pause_ms"] < 5000
    assert saved["source"] == f"workspace:{ws}"
    after = pyro.exec_workspace(ws, "echo later > /root/later && cat /root/note")
    assert after["stdout"] == "kept\n"

    check = (
        "jq --version; cat /root/note; ls /workspace; test -e /root/later || echo no-later;"
        " test -e /etc/apt/apt.conf.d/80pyro-egress || echo no-proxy-config"
    )
    fresh = pyro.create_workspace(environment="saved:1")["workspace_id"]
    seen = pyro.exec_workspace(fresh, check)["stdout"].split()
    assert seen[0].startswith("jq-") and seen[1] == "kept", seen
    assert "mine.txt" not in seen and "no-later" in seen and "no-proxy-config" in seen
    pyro.delete_workspace(fresh)

    # Stopped: saved as it is, through the CLI.
    pyro.stop_workspace(ws, discard_memory=True)
    env = dict(
        os.environ,
        PYRO_HOME=str(tmp_path / "state"),
        PYRO_CACHE_DIR=str(tmp_path / "cache"),
    )
    done = pyro_cli(env, "env", "save", ws, "saved:2", "--no-prepare", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["pause_ms"] == 0
    ran = pyro.run_in_vm("saved:2", "cat /root/later", timeout_seconds=120)
    assert ran["stdout"] == "later\n"
    with pytest.raises(NotFound):
        pyro.save_environment("ws-000000000000", "x:1")
    with pytest.raises(InvalidArgument, match="curated"):
        pyro.save_environment(ws, "debian:12")


DEVCONTAINER = """\
// the project's environment (JSON with comments and trailing commas)
{
  "name": "demo",
  "build": {
    "dockerfile": "Dockerfile",  // beside this file
    "context": "..",
    "args": {"MARK": "from-devcontainer",},
  },
  "customizations": {"vscode": {"extensions": []}},
}
"""


def git_project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "app.py").write_text("print('app')\n")
    for command in (["init", "-q"], ["add", "."], ["commit", "-qm", "init"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=root, check=True
        )
    return root


def test_a_project_devcontainer_becomes_the_chat_s_default_environment(
    tmp_path: Path,
    cache_dir: Path,
    warm_environment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project_dir = git_project(tmp_path / "demo")
    (project_dir / ".devcontainer").mkdir()
    (project_dir / ".devcontainer" / "devcontainer.json").write_text(DEVCONTAINER)
    (project_dir / ".devcontainer" / "Dockerfile").write_text(
        "FROM debian:12\nARG MARK\nCOPY app.py /opt/app.py\nRUN echo $MARK > /etc/project-mark\n"
    )
    cache = own_cache(tmp_path / "cache", cache_dir)
    env = dict(os.environ, PYRO_HOME=str(tmp_path / "state"), PYRO_CACHE_DIR=str(cache))
    log = tmp_path / "server.log"

    # Not prepared yet: the default environment, and the line says what prepares it.
    async def first() -> None:
        async with mcp_client(env, "--log-file", str(log), cwd=project_dir) as client:
            await client.list_tools()

    anyio.run(first)
    line = log.read_text().splitlines()[0]
    assert "environment debian:12 (the project declares .devcontainer" in line, line
    assert f"pyro prepare --project-path {project_dir}" in line

    prepared = pyro_cli(
        env, "prepare", "--project-path", str(project_dir), "--no-network", "--json"
    )
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    name = json.loads(prepared.stdout)["environment"]
    assert name.startswith("demo:devcontainer-")

    log.unlink()

    async def chat() -> None:
        async with mcp_client(env, "--log-file", str(log), cwd=project_dir) as client:
            made = await call(client, "workspace_create")
            assert made["environment"] == name
            ran = await call(
                client,
                "workspace_exec",
                workspace_id=made["workspace_id"],
                command="cat /etc/project-mark /opt/app.py; ls",
            )
            seen = ran["stdout"].splitlines()
            assert seen[:3] == ["from-devcontainer", "print('app')", "app.py"], seen
            await call(client, "workspace_delete", workspace_id=made["workspace_id"])

    anyio.run(chat)
    assert f"environment {name} (the project's environment" in log.read_text().splitlines()[0]
    # What `pyro host doctor` and `pyro host connect` report for a server started there.
    entry = Entry(sys.executable, ["-m", "pyro_mcp.cli.main", "mcp", "serve"])
    source = {"origin_kind": "project_path", "origin_ref": str(project_dir)}
    monkeypatch.setenv("PYRO_CACHE_DIR", str(cache))
    assert host_service.environment_of(entry, source)["name"] == name
    named = Entry(entry.command, [*entry.args, "--environment", "debian:12"])
    assert host_service.environment_of(named, source)["note"] == "named with --environment"

    # A broken file: the server still starts, on the default, and names the file and field.
    (project_dir / ".devcontainer" / "devcontainer.json").write_text('{"build": {"context": 3}}')
    log.unlink()
    anyio.run(first)
    line = log.read_text().splitlines()[0]
    assert "environment debian:12 (the project's devcontainer is not used" in line, line
    assert "devcontainer.json: build.dockerfile" in line
    bad = pyro_cli(env, "prepare", "--project-path", str(project_dir))
    assert bad.returncode == 2 and "build.dockerfile" in bad.stderr
    assert leaked_processes(tmp_path / "state") == []


def test_a_killed_build_two_builds_at_once_and_a_full_disk(
    pyro: Pyro, tmp_path: Path, warm_environment: dict[str, Any]
) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    dockerfile_path = context / "Dockerfile"
    state = tmp_path / "state"
    env = dict(os.environ, PYRO_HOME=str(state), PYRO_CACHE_DIR=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "pyro_mcp.cli.main", "env", "build", "--no-prepare"]

    # kill -9 mid-step: its guest goes with it, nothing is installed.
    dockerfile_path.write_text("FROM debian:12\nRUN echo started; sleep 300\n")
    with subprocess.Popen(
        [*command, "k:1", str(context)], env=env, stderr=subprocess.PIPE, text=True
    ) as building:
        assert building.stderr is not None
        for line in building.stderr:
            if "| started" in line:
                break
        building.kill()
        building.wait(30)
    deadline = time.monotonic() + 90
    while leaked_processes(state) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leaked_processes(state) == []
    with pytest.raises(NotFound):
        pyro.inspect_environment("k:1")

    # Two builds of one name at once: they take turns, the second finds the step cached.
    dockerfile_path.write_text("FROM debian:12\nRUN echo once > /once\n")
    both = [
        subprocess.Popen(
            [*command, "k:1", str(context), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [process.communicate(timeout=900) for process in both]
    for process, (out, err) in zip(both, results, strict=True):
        assert process.returncode == 0, err[-3000:]
        assert json.loads(out)["installed"]
    assert sum("(cached)" in err for _, err in results) == 1, results
    assert any(
        "an interrupted pull or build left" in err for _, err in results
    )  # the killed build's disk

    # A step that fills the disk: it fails with its output, nothing of it is kept.
    dockerfile_path.write_text("FROM debian:12\nRUN head -c 4G /dev/zero > /fill\n")
    with pytest.raises(EnvironmentBuildError, match=r"line 2 .* exited 1") as full:
        pyro.build_environment("k:2", context=context)
    assert "No space left on device" in str(full.value)
    layers = tmp_path / "cache" / "layers"
    assert all(d.with_suffix(".json").exists() for d in layers.glob("*/*.qcow2"))
    assert pyro.run_in_vm("k:1", "cat /once", timeout_seconds=120)["stdout"] == "once\n"


def test_the_building_guest_restores_warm_and_a_stale_or_damaged_one_is_not_used(
    tmp_path: Path, cache_dir: Path
) -> None:
    """The first build in a cache saves its building guest; the next restores it.
    A snapshot taken by another guest program is taken anew, not restored; one
    whose saved state was damaged fails its checksum, the build boots cold and
    the snapshot is dropped. Every build succeeds."""
    cache = tmp_path / "cache"
    (cache / "environments").mkdir(parents=True)
    for name in ("kernels", "runtime"):  # a warm-builder of its own, to damage
        (cache / name).symlink_to(cache_dir / name)
    (cache / "environments" / "debian-12").symlink_to(cache_dir / "environments" / "debian-12")
    lines: list[str] = []
    state = tmp_path / "state"
    pyro = Pyro(state_dir=state, cache_dir=cache, progress=lines.append)
    context = tmp_path / "context"
    context.mkdir()

    def build(number: int) -> list[str]:
        lines.clear()
        (context / "Dockerfile").write_text(f"FROM debian:12\nRUN echo {number} > /n\n")
        pyro.build_environment("w:1", context=context)
        return [line for line in lines if line.startswith(("phase=warm", "phase=boot"))]

    first = build(1)
    assert first[0] == "phase=warm saving a building guest to restore from now on (none yet)"
    assert first[1].startswith("phase=warm building guest restored in "), first
    assert build(2)[0].startswith("phase=warm building guest restored in ")

    shape = next((cache / "warm-builder" / "builder").iterdir())
    current = (shape / "current").resolve()
    manifest = json.loads((current / "manifest.json").read_text())
    manifest["key"]["guest_files"] = "initrd-an-older-guest-program.img"
    (current / "manifest.json").write_text(json.dumps(manifest))
    stale = build(3)
    assert "pyro's guest init or agent changed" in stale[0], stale
    assert stale[1].startswith("phase=warm building guest restored in ")

    saved = (shape / "current").resolve() / "devices.snap"
    with saved.open("r+b") as handle:  # same size, other bytes
        handle.seek(saved.stat().st_size // 2)
        handle.write(b"\xff" * 4096)
    damaged = build(4)
    assert "did not restore" in damaged[0] and "corrupt" in damaged[0], damaged
    assert damaged[1].startswith("phase=boot building guest booted in ")
    assert not (shape / "current").exists()  # the next build takes a new one
    assert pyro.run_in_vm("w:1", "cat /n", timeout_seconds=120)["stdout"] == "4\n"
    assert leaked_processes(state) == []
