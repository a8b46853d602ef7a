"""The command a chat host runs to start pyro's MCP server, from the user's options.

Hosts find a bare ``pyro`` only through PATH, and ``uv tool install`` puts it
in ``~/.local/bin``, often not on PATH: the command is always absolute.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pyro_mcp.errors import InvalidArgument
from pyro_mcp.mcp import profiles

SERVER_NAME = "pyro"


@dataclass(frozen=True)
class ServerOptions:
    """What ``pyro mcp serve`` is started with (the flags of ``pyro host ...``)."""

    mode: str | None = None
    profile: str | None = None
    project_path: str | None = None
    repo_url: str | None = None
    repo_ref: str | None = None
    no_project_source: bool = False
    environment: str | None = None
    # A bridge to a `pyro server`: its URL, and the variable that holds the token.
    remote: str | None = None
    token_env: str | None = None
    # "stdio": the local bridge; "http": the host's own transport to /mcp.
    transport: str = "stdio"
    # Register the installed `pyro` (`uv tool install`, on PATH or in
    # ~/.local/bin) instead of the one running this command (a checkout's venv).
    installed_package: bool = False

    def __post_init__(self) -> None:
        if self.transport not in ("stdio", "http"):
            raise InvalidArgument("--transport", "stdio (a local bridge) or http")
        if self.transport == "http" and self.remote is None:
            raise InvalidArgument("--transport", "http goes with --remote URL")
        if self.transport == "http" and (self.project_path or self.repo_url):
            raise InvalidArgument(
                "--transport",
                "over http the host talks to the server directly, which never reads this "
                "machine's files: use the bridge (--transport stdio) to seed from a project",
            )
        if self.token_env is not None:
            if self.remote is None:
                raise InvalidArgument("--token-env", "goes with --remote")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.token_env):
                raise InvalidArgument("--token-env", "the name of an environment variable")
        if self.remote is not None and not re.match(r"https?://[^/\s]+", self.remote):
            raise InvalidArgument("--remote", f"{self.remote!r} is not an http(s):// URL")
        if self.mode is not None and self.profile is not None:
            raise InvalidArgument(
                "--mode",
                "give --mode or --profile, not both: a mode is its own narrower tool set",
            )
        if self.mode is not None and self.mode not in profiles.MODES:
            raise InvalidArgument("--mode", f"one of {', '.join(profiles.MODES)}")
        if self.profile is not None and self.profile not in profiles.PROFILES:
            raise InvalidArgument("--profile", f"one of {', '.join(profiles.PROFILES)}")
        sources = [self.project_path is not None, self.repo_url is not None, self.no_project_source]
        if sum(sources) > 1:
            raise InvalidArgument(
                "--project-path", "give one of --project-path, --repo-url, --no-project-source"
            )
        if self.repo_ref is not None and self.repo_url is None:
            raise InvalidArgument("--repo-ref", "goes with --repo-url")

    def serve_args(self) -> list[str]:
        args = ["mcp", "serve"]
        if self.mode:
            args += ["--mode", self.mode]
        if self.profile:
            args += ["--profile", self.profile]
        if self.project_path:
            # Hosts start servers in a cwd of their choosing: the path must be absolute.
            args += ["--project-path", str(Path(self.project_path).expanduser().resolve())]
        if self.repo_url:
            args += ["--repo-url", self.repo_url]
            if self.repo_ref:
                args += ["--repo-ref", self.repo_ref]
        if self.no_project_source:
            args.append("--no-project-source")
        if self.environment:
            args += ["--environment", self.environment]
        if self.remote:
            args += ["--remote", self.remote, "--token-env", self.token_env or "PYRO_TOKEN"]
        return args


def pyro_launcher() -> list[str]:
    """An absolute command that runs this pyro, whether or not it is on PATH.

    The ``pyro`` script installed beside the running interpreter (a venv, or a
    ``uv tool`` environment) when there is one, else this interpreter with
    ``-m pyro_mcp.cli.main``.
    """
    beside = Path(sys.executable).parent / "pyro"
    if beside.is_file():
        return [str(beside.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "pyro_mcp.cli.main"]


def server_command(options: ServerOptions) -> tuple[str, list[str]]:
    """``(command, args)`` for a host's config."""
    launcher = [installed_pyro()] if options.installed_package else pyro_launcher()
    return launcher[0], [*launcher[1:], *options.serve_args()]


def installed_pyro() -> str:
    """The absolute path of the installed ``pyro`` command (``--installed-package``).

    Raises:
        InvalidArgument: none is installed.
    """
    import shutil

    found = shutil.which("pyro") or shutil.which("pyro", path=str(Path.home() / ".local" / "bin"))
    if found is None:
        raise InvalidArgument(
            "--installed-package",
            "no installed `pyro` on PATH or in ~/.local/bin: install it with "
            "`uv tool install PATH-TO-WHEEL-OR-CHECKOUT`, or leave the flag out to "
            "register this pyro",
        )
    return str(Path(found).absolute())
