"""The review surface of a workspace seeded from a Git project shows the agent's work.

What the project's own ignore rules ignore (caches, bytecode, build output) is
left out of diff, summary and directory exports unless asked for, and the
patch format goes through ``git apply`` on the host, binary files included.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path, PurePosixPath

import pytest

from pyro_mcp import Pyro
from pyro_mcp.workspaces.ignore import IgnoreRules

BINARY = bytes(range(256)) * 8


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def make_project(root: Path) -> Path:
    repo = root / "project"
    (repo / "sub").mkdir(parents=True)
    (repo / "build").mkdir()
    (repo / "app.py").write_text("def answer():\n    return 41\n")
    (repo / "old.txt").write_text("going away\n")
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "img.bin").write_bytes(BINARY)
    (repo / ".gitignore").write_text("__pycache__/\n*.pyc\n.pytest_cache/\nbuild/\n")
    (repo / "sub" / ".gitignore").write_text("*.log\n")
    (repo / "build" / "tracked.txt").write_text("tracked although ignored\n")
    git(root, "init", "-q", str(repo))
    git(repo, "add", ".")
    git(repo, "add", "-f", "build/tracked.txt")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init")
    (repo / ".git" / "info" / "exclude").write_text("notes.txt\n")
    return repo


# What the agent does: a real change plus the debris that running things leaves.
AGENT_WORK = """
set -e
sed -i 's/41/42/' app.py
python3 -c 'import py_compile as c; c.compile("app.py", "__pycache__/app.cpython-311.pyc")'
mkdir -p .pytest_cache/v && echo '{}' > .pytest_cache/v/lastfailed
echo noise > sub/run.log && echo kept > sub/notes.md
echo private > notes.txt
echo changed > build/tracked.txt && echo obj > build/new.o
printf '\\001\\002\\000binary' >> img.bin
chmod +x run.sh
rm old.txt
printf 'import app\\n' > new.py
echo new.py >> .gitignore
ln -s app.py link.py
"""
SHOWN = {
    "app.py",
    "sub/notes.md",
    "build/tracked.txt",
    "img.bin",
    "run.sh",
    "old.txt",
    "new.py",
    ".gitignore",
    "link.py",
}
LEFT_OUT = {"__pycache__", ".pytest_cache", "sub/run.log", "notes.txt", "build/new.o"}


def test_rules_follow_git(tmp_path: Path) -> None:
    rules = IgnoreRules(
        [
            {"base": "", "lines": ["notes.txt"]},
            {"base": "", "lines": ["*.pyc", "build/", "!keep.pyc"]},
            {"base": "sub", "lines": ["*.log", "/only-here"]},
        ],
        ["build/tracked.txt"],
    )
    assert rules.matches("a/b.pyc", False) and not rules.matches("keep.pyc", False)
    assert rules.matches("build", True) and not rules.matches("build", False)
    assert rules.matches("sub/deep/x.log", False) and not rules.matches("x.log", False)
    assert rules.matches("sub/only-here", False) and not rules.matches("sub/a/only-here", False)
    assert rules.matches("notes.txt", False)
    assert rules.is_tracked("build", True) and rules.is_tracked("build/tracked.txt", False)


def test_tracked_directories_are_what_pathlib_calls_parents() -> None:
    tracked = ["a/b/c.txt", "a/b/d.txt", "x.txt", "a/e/f/g", "q/r"]
    rules = IgnoreRules([], tracked)
    expected = {str(p) for name in tracked for p in PurePosixPath(name).parents}
    assert all(rules.is_tracked(d, True) for d in expected)
    assert not rules.is_tracked("a/b/c.txt", True) and not rules.is_tracked("q/r", True)
    assert not IgnoreRules([], []).is_tracked(".", True)


def test_diff_summary_and_export_leave_out_what_the_project_ignores(
    pyro: Pyro, tmp_path: Path
) -> None:
    repo = make_project(tmp_path)
    ws = pyro.create_workspace(project_path=repo)["workspace_id"]
    try:
        done = pyro.exec_workspace(ws, AGENT_WORK)
        assert done["exit_code"] == 0, done

        diff = pyro.diff_workspace(ws)
        assert {c["path"] for c in diff["changes"]} == SHOWN
        assert diff["ignored_count"] == len(LEFT_OUT)
        assert "Binary files a/img.bin and b/img.bin differ" in diff["patch"]

        everything = pyro.diff_workspace(ws, include_ignored=True)
        paths = {c["path"] for c in everything["changes"]}
        assert paths >= SHOWN | LEFT_OUT and everything["ignored_count"] == 0
        assert "__pycache__/app.cpython-311.pyc" in paths

        summary = pyro.summarize_workspace(ws)
        assert {f["path"] for f in summary["changes"]["files"]} == SHOWN
        assert summary["changes"]["ignored_count"] == len(LEFT_OUT)

        # The patch form applies to the original checkout, binary and mode included,
        # and leaves it equal to the workspace's own export.
        patch = pyro.diff_workspace(ws, format="patch")["patch"]
        assert "GIT binary patch" in patch
        (tmp_path / "fix.patch").write_text(patch)
        git(repo, "apply", "--check", str(tmp_path / "fix.patch"))
        git(repo, "apply", str(tmp_path / "fix.patch"))
        exported = pyro.export_workspace(ws, ".", tmp_path / "out")
        assert exported["ignored_count"] == len(LEFT_OUT)
        out = tmp_path / "out"
        assert not (out / "__pycache__").exists() and not (out / "sub" / "run.log").exists()
        assert (out / "sub" / "notes.md").read_text() == "kept\n"
        for name in ("app.py", "img.bin", "new.py", ".gitignore", "build/tracked.txt"):
            assert (repo / name).read_bytes() == (out / name).read_bytes(), name
        assert (repo / "link.py").is_symlink() and (repo / "run.sh").stat().st_mode & 0o100
        assert not (repo / "old.txt").exists()

        full = pyro.export_workspace(ws, "sub", tmp_path / "sub-all", include_ignored=True)
        assert full["ignored_count"] == 0 and (tmp_path / "sub-all" / "run.log").exists()
        # Naming an ignored directory on purpose exports all of it.
        cache = pyro.export_workspace(ws, ".pytest_cache", tmp_path / "cache")
        assert cache["files"] >= 1 and cache["ignored_count"] == 0
    finally:
        pyro.delete_workspace(ws)


def test_a_checkout_seeded_as_a_directory_leaves_out_the_same_paths(
    pyro: Pyro, tmp_path: Path
) -> None:
    """`--seed-path` of a checkout counts its ignore rules as `--project-path` does."""
    repo = make_project(tmp_path)
    ws = pyro.create_workspace(seed_path=repo)["workspace_id"]
    try:
        assert pyro.exec_workspace(ws, AGENT_WORK)["exit_code"] == 0
        diff = pyro.diff_workspace(ws)
        assert {c["path"] for c in diff["changes"]} == SHOWN
        assert diff["ignored_count"] == len(LEFT_OUT)
        everything = pyro.diff_workspace(ws, include_ignored=True)
        assert {c["path"] for c in everything["changes"]} >= SHOWN | LEFT_OUT
    finally:
        pyro.delete_workspace(ws)


def test_an_archive_seed_s_own_gitignore_counts(pyro: Pyro, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    (seed / "pkg").mkdir(parents=True)
    (seed / ".gitignore").write_text("*.log\n__pycache__/\n")
    (seed / "pkg" / ".gitignore").write_text("/generated.txt\n")
    (seed / "app.py").write_text("x = 1\n")
    archive = tmp_path / "seed.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(seed, arcname=".")
    ws = pyro.create_workspace(seed_path=archive)["workspace_id"]
    try:
        work = "echo x > a.log && mkdir __pycache__ && echo c > __pycache__/a.pyc"
        work += " && echo g > pkg/generated.txt && echo y > app.py"
        assert pyro.exec_workspace(ws, work)["exit_code"] == 0
        diff = pyro.diff_workspace(ws)
        assert [c["path"] for c in diff["changes"]] == ["app.py"]
        assert diff["ignored_count"] == 3
        everything = pyro.diff_workspace(ws, include_ignored=True)
        paths = {c["path"] for c in everything["changes"]}
        assert paths >= {"app.py", "a.log", "__pycache__", "pkg/generated.txt"}
        assert everything["ignored_count"] == 0
    finally:
        pyro.delete_workspace(ws)


def test_a_seed_without_ignore_rules_shows_everything(pyro: Pyro, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "app.py").write_text("x = 1\n")
    ws = pyro.create_workspace(seed_path=seed)["workspace_id"]
    try:
        pyro.exec_workspace(ws, "echo x > a.log")
        diff = pyro.diff_workspace(ws)
        assert [c["path"] for c in diff["changes"]] == ["a.log"]
        assert diff["ignored_count"] == 0
    finally:
        pyro.delete_workspace(ws)


def test_an_unknown_diff_format_is_refused(pyro: Pyro) -> None:
    with pytest.raises(Exception, match="format: use one of changes, patch"):
        pyro.diff_workspace("ws-none", format="html")
