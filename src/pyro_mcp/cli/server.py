"""``pyro server``: serve this machine's guests to other machines, and its tokens."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from pyro_mcp import config
from pyro_mcp.cli.render import print_json, table
from pyro_mcp.crossings import CAPABILITY_HELP, Capability

EPILOG = """\
examples:
  pyro server token create alice --max-running 3   a token for alice (shown once)
  pyro server token create ci --allow private-registry   may pull from the LAN's registry
  pyro server serve                                127.0.0.1:8787, for this machine
  pyro server serve --listen 0.0.0.0:8787 --tls-cert cert.pem --tls-key key.pem
  pyro server token list
  pyro server token revoke alice                   ends alice's MCP sessions too
  pyro server audit --principal alice --since 2h   what alice's calls did

On a laptop: PYRO_REMOTE=https://kvm-box:8787 PYRO_TOKEN=... pyro workspace list,
or `pyro host connect claude-code --remote URL --token-env PYRO_TOKEN`.
See docs/remote.md.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "server",
        help="serve this machine's guests over HTTP to other machines (tokens, MCP at /mcp)",
        description="Run the pyro engine as a server: the SDK API and the MCP tools over "
        "Streamable HTTP at /mcp, behind per-user bearer tokens.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="server_command", metavar="COMMAND", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve until interrupted",
        description="Serve the engine's API and the MCP tools (at /mcp). Listening on "
        "anything but loopback needs TLS (or --insecure, which says so at every start).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--listen", default="127.0.0.1:8787", metavar="HOST:PORT")
    serve.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain)")
    serve.add_argument("--tls-key", metavar="FILE", help="PEM private key")
    serve.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback address without TLS"
    )
    serve.add_argument(
        "--memory-merge",
        action="store_true",
        help="let the host merge identical guest pages (KSM) across principals; see "
        "docs/security.md for what that costs",
    )
    serve.add_argument("--profile", help="MCP profile for tokens without their own")
    serve.add_argument("--environment", help="default environment of the MCP tools")
    serve.add_argument("--json", action="store_true", help="print {url} as JSON once listening")
    serve.set_defaults(handler=handle_serve)

    audit = sub.add_parser(
        "audit",
        help="the server's audit trail: one line per call (run on the server)",
        description="Read PYRO_HOME/audit.jsonl and its rotated files: for each call, when, "
        "which principal, the method, what it named, whether it was allowed (ok, refused "
        "by the server's checks, or failed in the engine), why, and how long it took. "
        "Argument values are never recorded.",
        epilog="examples:\n"
        "  pyro server audit --since 2h\n"
        "  pyro server audit --principal alice --since 2026-12-07T09:00 --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument("--principal", metavar="NAME", help="only this token's calls")
    audit.add_argument(
        "--since", metavar="T", help="an ISO time (UTC unless it says) or an age: 30m, 2h, 7d"
    )
    audit.add_argument("--json", action="store_true", help="print {count, entries: [...]}")
    audit.set_defaults(handler=handle_audit)

    token = sub.add_parser("token", help="create, list and revoke tokens")
    tokens = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    create = tokens.add_parser(
        "create",
        help="a new token for NAME, shown once",
        description="Create a bearer token for NAME. It is printed once and stored only as "
        "a hash. Clients send it as `Authorization: Bearer TOKEN` (PYRO_TOKEN).",
    )
    create.add_argument("name")
    create.add_argument("--max-running", type=int, metavar="N", help="live workspaces at once")
    create.add_argument("--max-disk-gib", type=float, metavar="G", help="disk its workspaces use")
    create.add_argument(
        "--max-env-gib",
        type=float,
        metavar="G",
        help="what its own environments (pulled, built, saved) may take",
    )
    create.add_argument("--profile", help="the MCP profile its /mcp sessions get")
    create.add_argument("--admin", action="store_true", help="sees and manages every workspace")
    create.add_argument(
        "--allow",
        nargs="+",
        default=[],
        metavar="CAPABILITY",
        choices=[c.value for c in Capability],
        help="operator switches this (non-admin) token may use: "
        + "; ".join(f"{c.value}: {CAPABILITY_HELP[c]}" for c in Capability),
    )
    create.add_argument("--json", action="store_true", help='print {"name", "token"}')
    create.set_defaults(handler=handle_create)
    listing = tokens.add_parser("list", help="tokens by name (never the tokens themselves)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=handle_list)
    revoke = tokens.add_parser("revoke", help="forget NAME's token; ends its MCP sessions")
    revoke.add_argument("name")
    revoke.add_argument("--json", action="store_true")
    revoke.set_defaults(handler=handle_revoke)


def _registry() -> Any:
    from pyro_mcp.server.registry import Registry

    return Registry(config.default_paths().state_dir / "server.db")


def handle_serve(args: argparse.Namespace) -> int:
    from pyro_mcp.mcp import profiles
    from pyro_mcp.server import serve

    if args.profile:
        profiles.tool_names(args.profile, None)  # an unknown profile fails here, not per token

    def announce(url: str, warning: str) -> None:
        if warning:
            print(f"pyro: {warning}", file=sys.stderr)
        if args.json:
            print(json.dumps({"url": url}))  # one line: a supervisor reads it to connect
        else:
            print(f"pyro server listening on {url} (MCP at {url}/mcp)", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()

    paths = config.default_paths()
    paths.ensure()
    serve.run(
        paths,
        listen=args.listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure=args.insecure,
        memory_merge=args.memory_merge,
        profile=args.profile,
        environment=args.environment,
        announce=announce,
    )
    return 0


def handle_create(args: argparse.Namespace) -> int:
    if args.profile:
        from pyro_mcp.mcp import profiles

        profiles.tool_names(args.profile, None)
    token = _registry().create_token(
        args.name,
        admin=args.admin,
        max_running=args.max_running,
        max_disk_gib=args.max_disk_gib,
        profile=args.profile,
        capabilities=args.allow,
        max_env_gib=args.max_env_gib,
    )
    if args.json:
        print_json({"name": args.name, "token": token})
    else:
        print(token)
        print(
            f"token for {args.name}: shown once, stored only as a hash. Give it to the "
            "client as PYRO_TOKEN (Authorization: Bearer).",
            file=sys.stderr,
        )
    return 0


def handle_list(args: argparse.Namespace) -> int:
    tokens = _registry().tokens()
    if args.json:
        print_json({"tokens": tokens})
        return 0
    if not tokens:
        print("no tokens; create one with `pyro server token create NAME`")
        return 0
    rows = [
        [
            t["name"],
            "yes" if t["admin"] else "",
            "" if t["max_running"] is None else str(t["max_running"]),
            "" if t["max_disk_gib"] is None else f"{t['max_disk_gib']:g}",
            "" if t["max_env_gib"] is None else f"{t['max_env_gib']:g}",
            t["profile"] or "",
            ",".join(t["capabilities"]) or ("all" if t["admin"] else ""),
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(t["created_at"])),
        ]
        for t in tokens
    ]
    print(
        table(
            rows,
            [
                "NAME",
                "ADMIN",
                "MAX RUNNING",
                "MAX DISK GIB",
                "MAX ENV GIB",
                "PROFILE",
                "CAPABILITIES",
                "CREATED",
            ],
        )
    )
    return 0


def handle_revoke(args: argparse.Namespace) -> int:
    _registry().revoke(args.name)
    if args.json:
        print_json({"name": args.name, "revoked": True})
    else:
        print(f"revoked {args.name}'s token; its open MCP sessions end within seconds")
    return 0


def handle_audit(args: argparse.Namespace) -> int:
    from pyro_mcp.server import audit

    since = audit.parse_since(args.since) if args.since else None
    path = config.default_paths().state_dir / audit.FILE_NAME
    entries = list(audit.read(path, principal=args.principal, since=since))
    if args.json:
        print_json({"count": len(entries), "entries": entries})
        return 0
    if not entries:
        print(
            f"no calls recorded in {path}"
            + (" for that selection" if args.principal or since else "")
        )
        return 0
    rows = [
        [
            str(e.get("time", ""))[:23],
            str(e.get("principal", "")),
            str(e.get("method", "")),
            next((str(e[k]) for k in audit.TARGETS if k in e), ""),
            str(e.get("result", "")),
            str(e.get("duration_ms", "")),
            str(e.get("reason", ""))[:80],
        ]
        for e in entries
    ]
    print(table(rows, ["TIME", "PRINCIPAL", "METHOD", "TARGET", "RESULT", "MS", "REASON"]))
    return 0
