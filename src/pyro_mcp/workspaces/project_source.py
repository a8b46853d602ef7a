"""Where a project's files come from when a server starts in (or for) a project.

A Git checkout seeds workspaces with its tracked files as they are in the
working tree: ignored build output and untracked files never go in, and a
tracked file that is deleted or unreadable is skipped instead of breaking the
start. A repository URL is cloned on the host into the cache (``file://``
works, for tests and offline use).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyro_mcp import host_tools
from pyro_mcp.errors import InvalidArgument

FALLBACK_FLAGS = (
    "--project-path PATH, --repo-url URL [--repo-ref REF] or --no-project-source; or give "
    "each workspace an explicit seed_path (workspace_create seed_path=DIR, or "
    "`pyro workspace create --seed-path DIR`)"
)


@dataclass(frozen=True)
class ProjectSource:
    """The default seed of new workspaces."""

    origin_kind: str  # "project_path", "repo_url" or "none"
    origin_ref: str  # the checkout path, or URL[@ref]
    root: Path | None  # the checkout whose tracked files are the seed
    # False for a plain folder (no Git around it): every file in it is the seed.
    tracked: bool = True

    @classmethod
    def none(cls) -> ProjectSource:
        return cls("none", "", None)


def resolve(
    *,
    cwd: Path,
    cache_dir: Path,
    project_path: str | None = None,
    repo_url: str | None = None,
    repo_ref: str | None = None,
    no_project_source: bool = False,
) -> ProjectSource:
    """The project source for a server started with these flags.

    Raises:
        InvalidArgument: an explicit source is not usable; the message names the fallback flags.
    """
    if no_project_source:
        return ProjectSource.none()
    if repo_url:
        checkout = clone(repo_url, repo_ref, cache_dir / "repos")
        return ProjectSource(
            "repo_url", f"{repo_url}@{repo_ref}" if repo_ref else repo_url, checkout
        )
    if project_path:
        folder = Path(project_path).expanduser()
        root = git_toplevel(folder)
        if root is not None:
            return ProjectSource("project_path", str(root), root)
        if folder.is_dir():  # a plain folder, as pyro-mcp 4.5 takes: all of it
            plain = folder.resolve()
            return ProjectSource("project_path", str(plain), plain, tracked=False)
        raise InvalidArgument(
            "--project-path", f"{project_path} is not a folder; use {FALLBACK_FLAGS}"
        )
    root = git_toplevel(cwd)
    return ProjectSource("project_path", str(root), root) if root else ProjectSource.none()


def git_toplevel(path: Path) -> Path | None:
    if not path.is_dir():
        return None
    result = _git(["-C", str(path), "rev-parse", "--show-toplevel"])
    return Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else None


def checkout_at(path: Path) -> Path | None:
    """``path`` itself if it is the top of a Git checkout (a seed directory that is one)."""
    if not (path / ".git").exists():
        return None
    root = git_toplevel(path)
    return root if root is not None and root.resolve() == path.resolve() else None


def tracked_files(root: Path) -> list[str]:
    """The checkout's tracked paths (as in the index), relative to ``root``."""
    result = _git(["-C", str(root), "ls-files", "-z", "--cached"])
    if result.returncode != 0:
        raise InvalidArgument(
            "project",
            f"cannot list the tracked files of {root}: {result.stderr.strip()}; "
            f"use {FALLBACK_FLAGS}",
        )
    return [name for name in result.stdout.split("\0") if name]


def clone(url: str, ref: str | None, repos_dir: Path) -> Path:
    """A clean clone of ``url`` at ``ref`` in the cache (re-cloned on every start)."""
    key = hashlib.sha256(f"{url}\0{ref or ''}".encode()).hexdigest()[:16]
    target = repos_dir / key
    fresh = repos_dir / f".{key}.partial"
    shutil.rmtree(fresh, ignore_errors=True)
    repos_dir.mkdir(parents=True, exist_ok=True)
    result = _git(["clone", "--quiet", "--no-recurse-submodules", url, str(fresh)], timeout=600)
    if result.returncode != 0:
        shutil.rmtree(fresh, ignore_errors=True)
        raise InvalidArgument(
            "--repo-url", f"cannot clone {url}: {result.stderr.strip()[:400]}; use {FALLBACK_FLAGS}"
        )
    if ref:
        checkout = _git(["-C", str(fresh), "checkout", "--quiet", ref])
        if checkout.returncode != 0:
            shutil.rmtree(fresh, ignore_errors=True)
            raise InvalidArgument(
                "--repo-ref",
                f"{ref!r} is not a branch, tag or commit of {url}; use {FALLBACK_FLAGS}",
            )
    shutil.rmtree(target, ignore_errors=True)
    fresh.rename(target)
    return target


def _git(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return host_tools.run(host_tools.GIT, argv, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise InvalidArgument(
            "project", f"git {argv[0]} did not finish in {timeout:.0f} s; use {FALLBACK_FLAGS}"
        ) from exc
