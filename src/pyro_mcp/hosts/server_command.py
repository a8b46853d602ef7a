"""The command a chat host runs to start pyro's MCP server, from the user's options.

Hosts find a bare ``pyro`` only through PATH, and ``uv tool install`` puts it
in ``~/.local/bin``, often not on PATH: the command is always absolute.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pyro_mcp import config
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


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """``pyro mcp serve``'s flags: the CLI's parser has them, and the host helpers
    read a registered command with them (``parse_serve_flags``)."""
    parser.add_argument("--profile", choices=list(profiles.PROFILES), default=None)
    parser.add_argument("--mode", choices=list(profiles.MODES), default=None)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--project-path", help="a Git checkout whose tracked files seed workspaces")
    source.add_argument("--repo-url", help="a repository to clone on the host as the seed")
    source.add_argument("--no-project-source", action="store_true", help="start workspaces empty")
    parser.add_argument("--repo-ref", help="branch, tag or commit of --repo-url")
    parser.add_argument(
        "--environment",
        default=None,
        help=(
            "the default environment of workspace_create and vm_run (default: the "
            "project's .devcontainer environment once `pyro prepare --project-path` "
            f"made it, else {config.DEFAULT_ENVIRONMENT})"
        ),
    )
    parser.add_argument(
        "--allow-host-path",
        action="append",
        default=[],
        metavar="DIR",
        help="a host directory MCP tools may read seeds from and export to (repeatable); "
        "the project root is always allowed",
    )
    parser.add_argument(
        "--default-ttl-seconds",
        type=int,
        default=config.MCP_DEFAULT_TTL_SECONDS,
        metavar="S",
        help="reap a workspace the chat created after this long without activity, unless it "
        "set its own ttl_seconds (default: %(default)s, 24 h; 0: never)",
    )
    parser.add_argument(
        "--idle-suspend-seconds",
        type=int,
        default=config.DEFAULT_IDLE_SUSPEND_SECONDS,
        metavar="S",
        help="suspend a workspace after this long without a call, unless it set its own "
        "idle_suspend_seconds: its memory is saved and the next call resumes it "
        "(default: %(default)s; 0: never)",
    )
    parser.add_argument(
        "--allow-private-egress",
        action="store_true",
        help="workspaces this server creates may reach loopback, link-local and private "
        "addresses (the chat cannot ask for this)",
    )
    parser.add_argument(
        "--allow-host-services",
        action="store_true",
        help="workspaces this server creates may reach this host's 127.0.0.1:PORT as "
        "host.pyro.internal:PORT when they allow it (the chat cannot ask for this switch)",
    )
    parser.add_argument(
        "--remote",
        dest="mcp_remote",
        metavar="URL",
        help="a local stdio bridge to the `pyro server` at URL (default: PYRO_REMOTE): the "
        "chat host keeps a local command, seeds are packed from this checkout, the guests "
        "run on the server (token in PYRO_TOKEN)",
    )
    parser.add_argument(
        "--token-env",
        default="PYRO_TOKEN",
        metavar="VAR",
        help="with --remote: the environment variable holding the token (default: %(default)s)",
    )
    parser.add_argument("--log-file", type=Path, help="write logs here instead of stderr")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="log every step (default: warnings, errors and one start-up line; chat hosts "
        "file every stderr line of a server as an error)",
    )


def parse_serve_flags(args: list[str]) -> argparse.Namespace | None:
    """``args`` (what follows ``mcp serve`` in a registered command) as ``pyro mcp
    serve`` would take them; None if it would refuse them."""
    parser = argparse.ArgumentParser(prog="pyro mcp serve", add_help=False)
    add_serve_flags(parser)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            return parser.parse_args(args)
    except SystemExit:
        return None
