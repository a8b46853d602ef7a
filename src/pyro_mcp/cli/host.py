"""``pyro host connect | print-config | repair | doctor``: pyro in Claude Code, Codex, OpenCode."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pyro_mcp.cli.render import print_json
from pyro_mcp.errors import InvalidArgument
from pyro_mcp.hosts.configs import HOSTS, SCOPES
from pyro_mcp.hosts.server_command import ServerOptions
from pyro_mcp.mcp import profiles

EPILOG = """\
examples:
  pyro host connect claude-code                 register pyro with Claude Code (user scope)
  pyro host connect codex --mode repro-fix      ... with Codex, the repro-fix tool set
  pyro host connect claude-code --scope project   write .mcp.json for the team
  pyro host print-config opencode > ~/.config/opencode/opencode.json
                                                a whole opencode.json (stdout is only the config)
  pyro host repair opencode                     fix pyro's entry in place (backup first)
  pyro host doctor                              which hosts have pyro, and does it start?
  pyro host print-config claude-desktop         the mcpServers snippet for Claude Desktop
                                                (and Cursor: print-config cursor)

The registered command is this pyro's absolute path: hosts need no PATH for it.

modes that suit each host (--mode):
  claude-code   cold-start, review-eval   (long sessions: set a project up, review a change)
  codex         repro-fix, inspect        (task-sized threads: reproduce and fix, look around)
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "host",
        help="connect pyro to a chat host and check it works",
        description="Register pyro's MCP server with Claude Code, Codex or OpenCode, print "
        "the config for any host, repair a broken entry, and check every host for real.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="host_command", metavar="ACTION", required=True)

    connect = sub.add_parser(
        "connect",
        help="register pyro with a host through its own CLI",
        description="Register pyro with the host (claude mcp add / codex mcp add; OpenCode's "
        "config file is edited), replacing an older pyro entry. Prints what it wrote and "
        "the next step.",
        epilog="modes that suit each host (--mode): claude-code: cold-start, review-eval; "
        "codex: repro-fix, inspect. A mode may bring its own default environment "
        "(cold-start: debian:12-build) unless --environment is given.\n"
        "example: pyro host connect claude-code --mode cold-start",
    )
    _host_arguments(connect, handle_connect)

    show = sub.add_parser(
        "print-config",
        help="print the exact config snippet for a host",
        description="Print the config snippet for the host: an opencode.json `mcp` entry, "
        ".mcp.json / ~/.claude.json `mcpServers`, a Codex config.toml table, Claude "
        "Desktop's claude_desktop_config.json or Cursor's mcp.json `mcpServers` (pasted: "
        "pyro does not edit those two), or the generic `mcpServers` form.",
    )
    show.add_argument("host", choices=list(HOSTS))
    _server_options(show)
    show.add_argument("--scope", choices=SCOPES, default="user", help="where it goes")
    show.add_argument("--output", type=Path, help="write the snippet to this file")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=handle_print_config)

    repair = sub.add_parser(
        "repair",
        help="rewrite pyro's entry in a host's config file in place",
        description="Rewrite pyro's entry in the host's config file, keeping every other "
        "entry and the comments and formatting (JSONC, TOML); a timestamped .bak- copy is "
        "made first. An invalid file is left alone.",
    )
    _host_arguments(repair, handle_repair)
    repair.add_argument(
        "--config-path", type=Path, help="rewrite this file instead of where the host keeps it"
    )

    doctor = sub.add_parser(
        "doctor",
        help="check every host's pyro entry and start it for real",
        description="For Claude Code, Codex and OpenCode: where the config lives, whether a "
        "pyro entry exists and matches what connect writes (ok, drifted, missing, "
        "unavailable: the host is not installed), and a health check that starts the exact "
        "command in the directory the host would use, completes an MCP handshake and lists "
        "the tools. Exits 1 when a host that has a pyro entry cannot start it. With server "
        "flags (--mode, --project-path, ...), an entry registered otherwise is drifted.",
        epilog="examples:\n  pyro host doctor\n  pyro host doctor --mode repro-fix\n"
        "  pyro host doctor codex --config-path ./config.toml\n"
        "  pyro host doctor --config-path ~/.codex/config.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    doctor.add_argument(
        "host", nargs="?", choices=["claude-code", "codex", "opencode"], help="only this host"
    )
    _server_options(doctor)
    doctor.add_argument(
        "--config-path",
        type=Path,
        help="check this file instead of the host's own (without HOST, the host is told by "
        "the file: .toml Codex, opencode.json OpenCode, mcpServers Claude Code)",
    )
    doctor.add_argument("--no-health", action="store_true", help="skip starting the servers")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(handler=handle_doctor)


def _host_arguments(parser: argparse.ArgumentParser, handler: Any) -> None:
    """What connect and repair both take: a host with a config file, the server's options."""
    parser.add_argument("host", choices=["claude-code", "codex", "opencode"])
    _server_options(parser)
    parser.add_argument("--scope", choices=SCOPES, default="user", help="default: user")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=handler)


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=list(profiles.MODES))
    parser.add_argument("--profile", choices=list(profiles.PROFILES))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--project-path", help="seed workspaces from this checkout (absolute)")
    source.add_argument("--repo-url", help="seed workspaces from a clone of this repository")
    source.add_argument("--no-project-source", action="store_true")
    parser.add_argument("--repo-ref")
    parser.add_argument("--environment", help="the server's default environment")
    parser.add_argument(
        "--installed-package",
        action="store_true",
        help="register the installed `pyro` (uv tool install) instead of this one",
    )
    parser.add_argument(
        "--remote",
        dest="host_remote",
        metavar="URL",
        help="register a local bridge to the `pyro server` at URL (`pyro mcp serve --remote`)",
    )
    parser.add_argument(
        "--token-env",
        metavar="VAR",
        help="with --remote: the environment variable holding the token (default PYRO_TOKEN); "
        "only its name is written into the host's config, never the token",
    )
    parser.add_argument(
        "--transport",
        choices=["stdio", "http"],
        default="stdio",
        help="with --remote: stdio, a local bridge (seeds and exports on this machine; "
        "default), or http, the host's own connection to the server's /mcp",
    )


def _options(args: argparse.Namespace) -> ServerOptions:
    return ServerOptions(
        mode=args.mode,
        profile=args.profile,
        project_path=args.project_path,
        repo_url=args.repo_url,
        repo_ref=args.repo_ref,
        no_project_source=args.no_project_source,
        environment=args.environment,
        remote=args.host_remote,
        token_env=args.token_env,
        transport=args.transport,
        installed_package=args.installed_package,
    )


def handle_connect(args: argparse.Namespace) -> int:
    from pyro_mcp import hosts

    result = hosts.connect_host(args.host, _options(args), scope=args.scope)
    code = 0 if result["health"]["ok"] else 1  # registered, but the server does not start
    if args.json:
        print_json(result)
        return code
    print(f"pyro is registered with {args.host} ({result['scope']} scope)")
    print(f"  wrote      {result['config_path']}")
    if result.get("transport") == "http":
        print(f"  endpoint   {result['url']} (token from ${result['token_env']})")
    else:
        print(f"  command    {result['command']} {' '.join(result['args'])}")
    chosen = result.get("environment") or {}
    if chosen.get("name"):
        print(f"  environment {chosen['name']} ({chosen['note']})")
    if result.get("backup"):
        print(f"  backup     {result['backup']}")
    _print_health(result["health"])
    print(f"next: {result['next_step']}")
    return code


def _print_health(health: dict[str, Any]) -> None:
    if health["ok"]:
        print(f"  starts     MCP handshake and {health['tools']} tools in {health['ms']} ms")
    else:
        print(f"  FAILS      the server does not start: {health['error']}")


def handle_print_config(args: argparse.Namespace) -> int:
    from pyro_mcp import hosts

    result = hosts.host_config(args.host, _options(args), scope=args.scope)
    if args.output is not None:
        written = _write_output(args.output, result["snippet"] + "\n")
        result["output"] = result["output_path"] = str(written)
    if args.json:
        print_json(result)
    elif args.output is not None:
        print(f"wrote the {args.host} snippet to {args.output}")
    else:
        # stdout is the host's config format alone, so `> FILE` is safe; the hint
        # goes to stderr.
        if result["config_path"]:
            print(f"pyro: this goes in {result['config_path']}", file=sys.stderr)
        print(result["snippet"])
    return 0


def _write_output(path: Path, text: str) -> Path:
    """``text`` into ``path``, making missing parent folders; a folder, or a path
    that cannot be made, is refused with its name."""
    target = path.expanduser()
    if target.is_dir():
        raise InvalidArgument("--output", f"{target} is a folder; name the file to write")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise InvalidArgument("--output", f"cannot write {target}: {parent} is not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InvalidArgument("--output", f"cannot write {target}: {reason}") from exc
    return target


def handle_repair(args: argparse.Namespace) -> int:
    from pyro_mcp import hosts

    result = hosts.repair_host(
        args.host, _options(args), scope=args.scope, config_path=args.config_path
    )
    code = 0 if result["health"]["ok"] else 1
    if args.json:
        print_json(result)
        return code
    print(f"repaired pyro's entry in {result['config_path']}")
    if result.get("transport") == "http":
        print(f"  endpoint   {result['url']} (token from ${result['token_env']})")
    else:
        print(f"  command    {result['command']} {' '.join(result['args'])}")
    print(f"  backup     {result['backup'] or '(the file was new)'}")
    _print_health(result["health"])
    print(f"next: {result['next_step']}")
    return code


def handle_doctor(args: argparse.Namespace) -> int:
    from pyro_mcp import hosts

    report = hosts.doctor_hosts(
        health=not args.no_health,
        options=_options(args),
        host=args.host,
        config_path=args.config_path,
    )
    failing = [h["host"] for h in report["hosts"] if h.get("health") and not h["health"]["ok"]]
    if args.json:
        print_json(report)
        return 1 if failing else 0
    print(f"pyro host doctor (this pyro: {report['expected_command']})")
    for host in report["hosts"]:
        installed = "installed" if host["installed"] else "not installed"
        print(f"  {host['host']:<12} {host['status']:<19} ({installed}) {host['config_path']}")
        if host["status"] != "ok":
            print(f"               {host['reason']}")
        health = host.get("health")
        if health is not None:
            if health["ok"]:
                print(
                    f"               starts: MCP handshake and {health['tools']} tools "
                    f"in {health['ms']} ms (cwd {host['server_cwd']})"
                )
            else:
                print(f"               FAILS to start ({health['ms']} ms): {health['error']}")
        source = host.get("project_source")
        if source:
            detail = source.get("origin_ref") or source.get("reason") or ""
            count = source.get("tracked_files")
            extra = f", {count} tracked files" if count is not None else ""
            print(f"               seeds from: {source['origin_kind']} {detail}{extra}")
            if source.get("note"):
                print(f"               ({source['note']})")
        chosen = host.get("environment")
        if chosen and chosen.get("name"):
            print(f"               environment: {chosen['name']} ({chosen['note']})")
        if host.get("fix"):
            print(f"               fix: {host['fix']}")
        if host.get("recommended_modes"):
            print(f"               modes that suit it: {', '.join(host['recommended_modes'])}")
    return 1 if failing else 0
