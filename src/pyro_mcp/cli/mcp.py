"""``pyro mcp serve``: the MCP server over stdio."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pyro_mcp import config
from pyro_mcp.hosts.server_command import add_serve_flags
from pyro_mcp.mcp import profiles


def _exposes(tools: tuple[str, ...]) -> str:
    """What a tool set holds, wrapped for help text (generated: it cannot drift)."""
    import textwrap

    listed = ", ".join(sorted(tools))
    return "\n".join(
        textwrap.wrap(
            f"{len(tools)} tools: {listed}", 78, initial_indent="      ", subsequent_indent="      "
        )
    )


_PROFILE_PURPOSE = {
    "vm-run": "one-shot commands in a fresh VM",
    "workspace-core": "the workspace loop (default); no network or secrets in workspace_create",
    "workspace-full": "everything, workspace_create with network_policy and secrets",
}

EPILOG = f"""\
profiles (how many tools):
{
    chr(10).join(
        f"  {name:<17} {purpose}{chr(10)}{_exposes(profiles.PROFILES[name])}"
        for name, purpose in _PROFILE_PURPOSE.items()
    )
}

modes (a narrower tool set with job-specific descriptions; give a mode or a profile):
{
    chr(10).join(
        f"  {name:<17} {purpose}{chr(10)}{_exposes(profiles.MODES[name])}"
        for name, purpose in profiles.MODE_PURPOSE.items()
    )
}

project source (the default seed of workspace_create):
  started inside a Git checkout, its tracked files (as in the working tree) seed new
  workspaces; --project-path names the checkout when the host starts the server
  elsewhere; --repo-url clones a repository on the host (file:// works);
  --no-project-source starts workspaces empty.

examples:
  pyro mcp serve
  pyro mcp serve --mode repro-fix --project-path /abs/repo
  pyro mcp serve --profile workspace-full --environment debian:12-build
  pyro mcp serve --repo-url https://git.example/repo.git --repo-ref v1.2
  claude mcp add pyro -- pyro mcp serve         # see docs/integrations.md

host paths (seed_path, workspace_sync_push sources, workspace_export outputs):
  only under the project root and --allow-host-path directories, symlinks resolved;
  exports never overwrite. With --no-project-source and no --allow-host-path, none.
  No tool, argument, profile or mode runs anything on the host: commands run in VMs.

stdout carries only MCP protocol; logs go to stderr (or --log-file).
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "mcp",
        help="serve the MCP tools to a chat host",
        description="The MCP server chat hosts (Claude Code, Codex, OpenCode) start over stdio.",
    )
    sub = parser.add_subparsers(dest="mcp_command", metavar="ACTION", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the MCP server on stdio",
        description="Run the pyro MCP server on stdin/stdout.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_flags(serve)
    serve.set_defaults(handler=handle_serve)


def handle_serve(args: argparse.Namespace) -> int:
    # Only what the handshake needs loads before it is answered: the MCP SDK and
    # the SDK facade load in the background (see pyro_mcp.mcp.fast_start).
    from pyro_mcp.errors import InvalidArgument
    from pyro_mcp.mcp import fast_start
    from pyro_mcp.workspaces import project_source

    if args.repo_ref and not args.repo_url:
        raise InvalidArgument("--repo-ref", "goes with --repo-url")
    if args.mode and args.profile:
        raise InvalidArgument(
            "--mode", "give --mode or --profile, not both: a mode is its own narrower tool set"
        )
    paths = config.default_paths()
    source = project_source.resolve(
        cwd=Path.cwd(),
        cache_dir=paths.cache_dir,
        project_path=args.project_path,
        repo_url=args.repo_url,
        repo_ref=args.repo_ref,
        no_project_source=args.no_project_source,
    )
    allowed = []
    for directory in args.allow_host_path:
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise InvalidArgument("--allow-host-path", f"{directory} is not a directory")
        allowed.append(path.resolve())
    from pyro_mcp.cli import client

    remote = client.remote_settings(args.mcp_remote or args.remote, args.token_env)
    if remote is not None:
        from pyro_mcp.transport import RemoteTransport

        # Before the handshake: a wrong URL, token or version fails the start
        # with its own message, which the chat host shows, not a later tool call.
        with RemoteTransport(remote[0], remote[1], ca_file=remote[2]) as probe:
            probe.hello()
        # The server has the environments; it checks the name at the first create.
        environment = args.environment or config.DEFAULT_ENVIRONMENT
        note = f"on {remote[0]}"
    elif args.environment:
        _check_environment(paths.cache_dir, args.environment)
        environment, note = args.environment, ""
    else:
        from pyro_mcp.environments import devcontainer

        environment, note = profiles.recommended_environment(
            args.mode,
            *devcontainer.choose(source.root, paths.cache_dir, config.DEFAULT_ENVIRONMENT),
            config.DEFAULT_ENVIRONMENT,
        )
    args.environment = environment
    tools = f"mode {args.mode}" if args.mode else f"profile {args.profile or 'workspace-core'}"
    seed = f"{source.origin_kind} {source.origin_ref}".strip()
    chosen = f"{environment} ({note})" if note else environment
    serving = f"{tools}, environment {chosen}, workspaces seeded from: {seed}"
    fast_start.configure_logging(args.log_file, args.verbose, serving)

    def build() -> Any:
        from pyro_mcp.mcp.server import create_server
        from pyro_mcp.sdk import Pyro
        from pyro_mcp.transport import RemoteTransport

        transport = None
        if remote is not None:
            transport = RemoteTransport(remote[0], remote[1], ca_file=remote[2])
        return create_server(
            args.profile,
            args.mode,
            pyro=Pyro(progress=_log_progress, transport=transport),
            # A remote server suspends and reaps its own workspaces.
            idle_timer=remote is None,
            project=source,
            environment=args.environment,
            allow_host_paths=allowed,
            default_ttl_seconds=args.default_ttl_seconds,
            idle_suspend_seconds=args.idle_suspend_seconds,
            allow_private_egress=args.allow_private_egress,
            allow_host_services=args.allow_host_services,
        )

    if not 0 <= args.default_ttl_seconds <= 365 * 86400:
        raise InvalidArgument("--default-ttl-seconds", "must be 0 (never) up to a year in seconds")
    if not 0 <= args.idle_suspend_seconds <= config.MAX_IDLE_SUSPEND_SECONDS:
        raise InvalidArgument("--idle-suspend-seconds", "must be 0 (never) up to a year in seconds")
    key = fast_start.cache_key(
        [
            args.profile,
            args.mode,
            args.environment,
            args.default_ttl_seconds,
            args.idle_suspend_seconds,
            args.allow_private_egress,
            args.allow_host_services,
            remote[0] if remote else None,
        ]
    )
    fast_start.serve(build, fast_start.HandshakeCache(paths.cache_dir, key))
    return 0


def _check_environment(cache_dir: Path, name: str) -> None:
    """A default environment that is neither curated nor installed is refused at
    start-up (the handshake path: a cheap look first, the full message only then)."""
    from pyro_mcp.environments.catalog import CATALOG, slug

    if name in CATALOG or (cache_dir / "environments" / slug(name) / "current").is_dir():
        return
    from pyro_mcp.environments.cache import EnvironmentCache

    EnvironmentCache(cache_dir).status(name)  # NotFound: what is installed, how to pull


def _log_progress(message: str) -> None:
    import logging

    logging.getLogger("pyro.mcp").info(message)
