"""``pyro host connect | print-config | repair | doctor``: pyro in a chat host, verified.

Registration goes through the host's own CLI where it has one (``claude mcp
add``, ``codex mcp add``), so the host writes its config the way it reads it;
OpenCode has no such command, so its config file is edited in place. Doctor
starts exactly what a host would start, where the host would start it, and
completes an MCP handshake: a config that looks right but fails shows the
server's own error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pyro_mcp.hosts.remote_http as remote_http
from pyro_mcp import host_tools
from pyro_mcp.errors import HostSetupError, InvalidArgument, PyroError
from pyro_mcp.hosts.configs import HOSTS, Entry, HostConfig, backup, get_host
from pyro_mcp.hosts.server_command import (
    SERVER_NAME,
    ServerOptions,
    parse_serve_flags,
    server_command,
)
from pyro_mcp.mcp import profiles

HEALTH_TIMEOUT_SECONDS = 30.0
CHECKED_HOSTS = ("claude-code", "codex", "opencode")
# The host's own command that shows pyro connected (`pyro host doctor` starts it for real).
VERIFY = {
    "claude-code": "claude mcp list",
    "codex": "codex mcp get pyro",
    "opencode": "opencode mcp list",
}


def print_config(
    host: str, options: ServerOptions, *, scope: str = "user", project: Path | None = None
) -> dict[str, Any]:
    """The exact config snippet for ``host`` (and where it goes); ``rendered_config``
    and ``server_command`` are pyro-mcp 4.5's names for the snippet and the command."""
    config = get_host(host)
    project = (project or Path.cwd()).resolve()
    where = None
    if host != "generic":
        config.check_scope(scope)
        where = str(config.config_path(scope, project))
    if options.transport == "http":
        url, var = remote_http.endpoint(options)
        snippet = remote_http.snippet(host, url, var)
        return {
            "host": host,
            "transport": "http",
            "url": url,
            "token_env": var,
            "config_path": where,
            "snippet": snippet,
            "rendered_config": snippet,
        }
    command, args = server_command(options)
    snippet = config.snippet(command, args)
    return {
        "host": host,
        "command": command,
        "args": args,
        "server_command": [command, *args],
        "config_path": where,
        "snippet": snippet,
        "rendered_config": snippet,
    }


def connect(
    host: str,
    options: ServerOptions,
    *,
    scope: str = "user",
    project: Path | None = None,
) -> dict[str, Any]:
    """Register pyro with ``host``, replacing an older ``pyro`` entry.

    Raises:
        HostSetupError: the host's CLI is missing (the message has the install
            command and the snippet to paste instead) or refused.
    """
    config = get_host(host)
    config.check_scope(scope)
    project = (project or Path.cwd()).resolve()
    if options.transport == "http":
        return _connect_http(host, options, config, scope, project)
    command, args = server_command(options)
    if host not in ("claude-code", "codex"):
        # OpenCode has no `mcp add`: its file is edited (a generic host refuses there).
        result = repair(host, options, scope=scope, project=project)
        return {
            **result,
            "how": "edited the config file (opencode has no `mcp add`)",
            "verification_command": VERIFY[host],
        }
    cli = _find_cli(config)
    if cli is None:
        snippet = config.snippet(command, args)
        raise HostSetupError(
            f"{config.cli} ({host}) is not installed or not on PATH. Install it with "
            f"`npm install -g {config.package}`, then run this again; or add this to "
            f"{config.config_path(scope, project)} yourself:\n{snippet}"
        )
    if host == "claude-code":
        remove = [str(cli), "mcp", "remove", "-s", scope, SERVER_NAME]
        add = [str(cli), "mcp", "add", "-s", scope, SERVER_NAME, "--", command, *args]
    else:
        remove = [str(cli), "mcp", "remove", SERVER_NAME]
        add = [str(cli), "mcp", "add", SERVER_NAME, "--", command, *args]
    _run_host(remove, project, check=False)  # an older entry, if any
    said = _run_host(add, project, check=True)
    if host == "codex" and "--token-env" in args:
        # `codex mcp add` cannot say which of the user's variables to forward
        # (env_vars); the file gets that key beside what the CLI wrote.
        config.write(scope, project, command, args)
    path = config.config_path(scope, project)
    return {
        "host": host,
        "scope": scope,
        "command": command,
        "args": args,
        "server_command": [command, *args],
        "verification_command": VERIFY[host],
        "config_path": str(path),
        "how": " ".join(add[:6] if host == "claude-code" else add[:4]) + " -- ...",
        "host_said": said.strip()[-500:],
        # Proves the entry starts, and records the handshake the server then
        # replays, so the host's first start is as fast as its later ones.
        "health": health_check(Entry(command, args), config.server_cwd(None, project)),
        "environment": environment_of(
            Entry(command, args),
            project_source_of(Entry(command, args), config.server_cwd(None, project)),
        ),
        "next_step": _next_step(host, scope),
    }


def _connect_http(
    host: str, options: ServerOptions, config: HostConfig, scope: str, project: Path
) -> dict[str, Any]:
    if host == "opencode":
        result = remote_http.write_opencode(options, scope=scope, project=project)
    else:
        cli = _find_cli(config)
        if cli is None:
            url, var = remote_http.endpoint(options)
            raise HostSetupError(
                f"{config.cli} ({host}) is not installed or not on PATH. Install it with "
                f"`npm install -g {config.package}`, then run this again; or add this to "
                f"{config.config_path(scope, project)} yourself:\n"
                f"{remote_http.snippet(host, url, var)}"
            )
        result = remote_http.connect(
            host, options, scope=scope, project=project, run_host=_run_host, cli=cli
        )
    return {**result, "next_step": _next_step(host, scope)}


def repair(
    host: str,
    options: ServerOptions,
    *,
    scope: str = "user",
    project: Path | None = None,
    config_path: Path | None = None,
) -> dict[str, Any]:
    """Rewrite pyro's entry in the host's config file (``config_path``, or where
    the host keeps it for ``scope``) in place, after a backup."""
    config = get_host(host, config_path=config_path)
    config.check_scope(scope)
    project = (project or Path.cwd()).resolve()
    if options.transport == "http":
        if host != "opencode":
            raise InvalidArgument(
                "--transport",
                f"repair rewrites {host}'s file for a local command; register the HTTP "
                f"endpoint again with `pyro host connect {host} --remote URL --transport http`",
            )
        result = remote_http.write_opencode(options, scope=scope, project=project)
        return {**result, "next_step": _next_step(host, scope)}
    command, args = server_command(options)
    path = config.config_path(scope, project)
    config.read(scope, project)  # refuses an unparseable file before any backup or write
    saved = backup(path)
    written = config.write(scope, project, command, args)
    return {
        "host": host,
        "scope": scope,
        "command": command,
        "args": args,
        "server_command": [command, *args],
        "config_path": str(written),
        "backup": str(saved) if saved else None,
        "backup_path": str(saved) if saved else None,
        "health": health_check(Entry(command, args), config.server_cwd(None, project)),
        "next_step": _next_step(host, scope),
    }


def doctor(
    *,
    project: Path | None = None,
    health: bool = True,
    options: ServerOptions | None = None,
    host: str | None = None,
    config_path: Path | None = None,
) -> dict[str, Any]:
    """For each host (or only ``host``, whose file may be ``config_path``): its
    config, pyro's entry, whether it matches what ``connect`` with ``options``
    writes, and a real health check.

    Each report has pyro-mcp 4.5's ``configured``, ``status`` (``ok``,
    ``drifted``, ``missing``, ``unavailable``), ``details`` and
    ``repair_command`` beside pyro's own fields.
    """
    project = (project or Path.cwd()).resolve()
    options = options or ServerOptions()
    if config_path is not None and host is None:
        host = host_of_file(config_path)
    if host is not None and host not in CHECKED_HOSTS:
        raise InvalidArgument(
            "host",
            f"pyro checks {', '.join(CHECKED_HOSTS)}; {host}'s config is pasted "
            f"(`pyro host print-config {host}`)",
        )
    expected_command, expected_args = server_command(options)
    reports = []
    for name in [host] if host else CHECKED_HOSTS:
        config = get_host(name, config_path=config_path)
        cli = _find_cli(config)
        report: dict[str, Any] = {
            "host": name,
            "installed": cli is not None,
            "cli": str(cli) if cli else None,
            "config_path": str(config.config_path("user", project)),
            "recommended_modes": list(profiles.HOST_MODES.get(name, ())),
        }
        entry, scope, problem = _find_entry(config, project)
        if scope is not None:
            report["config_path"] = str(config.config_path(scope, project))
        report["scope"] = scope
        report["entry"] = entry.to_dict() if entry else None
        if entry is not None and entry.url is not None:
            reports.append(_doctor_http(report, entry, health))
            continue
        status, reason = _judge(cli is not None, entry, problem, expected_command, expected_args)
        asked = options != ServerOptions()  # flags given here: the entry must have them
        if status == "ok" and asked and entry is not None and entry.args != expected_args:
            status = "drifted"
            reason = f"it runs `{' '.join(entry.args)}`, not `{' '.join(expected_args)}`"
        report["status"], report["reason"] = status, reason
        report["fix"] = None if status == "ok" else _fix(name, options, config_path)
        if entry is not None:
            cwd = config.server_cwd(entry, project)
            report["server_cwd"] = str(cwd)
            report["project_source"] = project_source_of(entry, cwd)
            report["environment"] = environment_of(entry, report["project_source"])
            if name == "codex" and not entry.cwd:
                report["project_source"]["note"] = (
                    "Codex starts servers in ~/.codex outside a chat thread and in the "
                    "project inside one"
                )
            if health:
                report["health"] = health_check(entry, cwd)
                if not report["health"]["ok"] and report["fix"] is None:
                    report["fix"] = (
                        f"the server refuses to start: correct what it says, then run "
                        f"`pyro host connect {name}` with the corrected options"
                        if name != "opencode"
                        else "the server refuses to start: correct what it says, then run "
                        "`pyro host repair opencode` with the corrected options"
                    )
        reports.append(report)
    for report in reports:  # pyro-mcp 4.5's names for the same facts
        report["configured"] = report.get("entry") is not None
        report["details"] = report["reason"]
        report["repair_command"] = report["fix"]
    return {"project": str(project), "expected_command": expected_command, "hosts": reports}


def _doctor_http(report: dict[str, Any], entry: Entry, health: bool) -> dict[str, Any]:
    """A host registered with a `pyro server`'s own /mcp: no local command to judge."""
    assert entry.url is not None
    report["status"] = "ok"
    report["reason"] = f"the host's own HTTP transport to {entry.url}"
    report["fix"] = None
    if entry.token_env is None:
        report["status"], report["reason"] = "drifted", "its Authorization header names no variable"
        report["fix"] = f"pyro host connect {report['host']} --remote URL --transport http"
    elif health:
        report["health"] = remote_http.health_check(entry.url, entry.token_env)
        if not report["health"]["ok"]:
            report["fix"] = (
                f"export {entry.token_env} (a token from `pyro server token create`) where "
                "the host starts, and check the server is up"
            )
    return report


def health_check(entry: Entry, cwd: Path) -> dict[str, Any]:
    """Start the entry's command in ``cwd``, complete an MCP handshake, list the tools."""
    import anyio

    from mcp import Client, StdioServerParameters

    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as errlog:
        params = StdioServerParameters(
            command=entry.command, args=entry.args, cwd=str(cwd), env=dict(os.environ)
        )

        async def handshake() -> list[str]:
            from mcp.client.stdio import stdio_client

            with anyio.fail_after(HEALTH_TIMEOUT_SECONDS):
                async with Client(stdio_client(params, errlog=errlog)) as client:
                    listed = await client.list_tools()
                    return [tool.name for tool in listed.tools]

        try:
            tools = anyio.run(handshake)
        except BaseException as exc:  # the server's failure, whatever form it takes
            if isinstance(exc, KeyboardInterrupt):
                raise
            errlog.seek(0)
            said = errlog.read().strip().splitlines()
            return {
                "ok": False,
                "ms": int((time.monotonic() - started) * 1000),
                "error": (said[-1] if said else _describe_failure(exc))[:1000],
                "stderr_tail": said[-5:],
            }
    return {"ok": True, "ms": int((time.monotonic() - started) * 1000), "tools": len(tools)}


def project_source_of(entry: Entry, cwd: Path) -> dict[str, Any]:
    """What a server started from ``entry`` in ``cwd`` would seed workspaces from."""
    from pyro_mcp.workspaces import project_source

    flags = _serve_flags(entry)
    if flags is None:
        return {"origin_kind": None, "reason": "the entry does not run `pyro mcp serve`"}
    if flags.no_project_source:
        return {"origin_kind": "none", "reason": "--no-project-source: workspaces start empty"}
    if flags.repo_url:
        ref = f"@{flags.repo_ref}" if flags.repo_ref else ""
        return {"origin_kind": "repo_url", "origin_ref": flags.repo_url + ref}
    start = Path(flags.project_path) if flags.project_path else cwd
    root = project_source.git_toplevel(start) if start.is_dir() else None
    if root is None:
        why = (
            f"{start} is not inside a Git checkout"
            if flags.project_path
            else f"the host starts the server in {cwd}, which is not inside a Git checkout"
        )
        return {
            "origin_kind": "none",
            "reason": why + "; workspaces start empty. Add --project-path DIR to seed them "
            "from a checkout, or --no-project-source to say empty on purpose",
        }
    try:
        count = len(project_source.tracked_files(root))
    except PyroError as exc:
        return {"origin_kind": "project_path", "origin_ref": str(root), "reason": str(exc)}
    return {"origin_kind": "project_path", "origin_ref": str(root), "tracked_files": count}


def environment_of(entry: Entry, source: dict[str, Any]) -> dict[str, Any]:
    """The default environment a server started from ``entry`` would use, and why."""
    from pyro_mcp import config as pyro_config
    from pyro_mcp.environments import devcontainer

    flags = _serve_flags(entry)
    if flags is None:
        return {"name": None, "note": "the entry does not run `pyro mcp serve`"}
    if flags.environment:
        return {"name": flags.environment, "note": "named with --environment"}
    root = Path(source["origin_ref"]) if source.get("origin_kind") == "project_path" else None
    default = pyro_config.DEFAULT_ENVIRONMENT
    name, note = profiles.recommended_environment(
        flags.mode,
        *devcontainer.choose(root, pyro_config.default_paths().cache_dir, default),
        default,
    )
    return {"name": name, "note": note or "pyro's default"}


# ---------------------------------------------------------------------- helpers


def _find_cli(config: HostConfig) -> Path | None:
    found = shutil.which(config.cli) if config.cli else None
    return Path(found) if found else None


def _run_host(argv: list[str], cwd: Path, *, check: bool) -> str:
    env = dict(os.environ, DISABLE_AUTOUPDATER="1", DISABLE_TELEMETRY="1")
    try:
        result = host_tools.run(
            Path(argv[0]), argv[1:], cwd=cwd, env=env, capture_output=True, timeout=120
        )
    except subprocess.TimeoutExpired as exc:
        raise HostSetupError(f"could not run {argv[0]}: {exc}") from exc
    if check and result.returncode != 0:
        said = (result.stderr or result.stdout).strip()[-800:]
        raise HostSetupError(
            f"`{' '.join(argv[:5])} ...` failed (exit {result.returncode}): {said}"
        )
    return result.stdout + result.stderr


def _find_entry(config: HostConfig, project: Path) -> tuple[Entry | None, str | None, str | None]:
    """Pyro's entry in the first scope that has one (local, project, user for Claude Code)."""
    order = [s for s in ("local", "project", "user") if s in config.scopes]
    for scope in order:
        try:
            entry = config.read(scope, project)
        except HostSetupError as exc:
            return None, scope, str(exc)
        if entry is not None:
            return entry, scope, None
    return None, None, None


def _judge(
    installed: bool,
    entry: Entry | None,
    problem: str | None,
    expected_command: str,
    expected_args: list[str],
) -> tuple[str, str]:
    if problem is not None:
        return "drifted", problem
    if entry is None:
        if not installed:
            return "unavailable", "its CLI is not on PATH and it has no pyro entry"
        return "missing", "no pyro entry"
    if not Path(entry.command).is_absolute():
        return "drifted", (
            f"the command {entry.command!r} is a bare name: the host finds it only through "
            "PATH, which often lacks ~/.local/bin"
        )
    if not Path(entry.command).exists():
        return "drifted", f"the command {entry.command} does not exist"
    launcher_args = expected_args[: len(expected_args) - 2]  # e.g. ["-m", "pyro_mcp.cli.main"]
    if entry.command != expected_command or entry.args[: len(launcher_args)] != launcher_args:
        return "drifted", f"the command {entry.command} is not this pyro ({expected_command})"
    if _serve_flags(entry) is None:
        return "drifted", "its arguments are not a valid `pyro mcp serve ...`"
    return "ok", "registered with this pyro's absolute command"


def _serve_flags(entry: Entry) -> argparse.Namespace | None:
    """The entry's ``mcp serve`` flags, parsed as pyro would (None if they are not that)."""
    args = list(entry.args)
    with contextlib.suppress(ValueError):
        args = args[args.index("mcp") :]
    if args[:2] != ["mcp", "serve"]:
        return None
    return parse_serve_flags(args[2:])


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no MCP handshake within {HEALTH_TIMEOUT_SECONDS:.0f} s"
    inner = getattr(exc, "exceptions", None)
    if inner:
        return _describe_failure(inner[0])
    return f"{type(exc).__name__}: {exc}"


def _next_step(host: str, scope: str) -> str:
    if host == "claude-code":
        if scope == "project":
            return (
                "commit .mcp.json; Claude Code asks each user to approve it once "
                "(`claude` in the project, or `claude mcp list` to check)"
            )
        return "run `claude mcp list`: pyro should say ✔ Connected"
    if host == "codex":
        return "run `pyro host doctor` (codex mcp list never starts servers), then start `codex`"
    return "run `opencode mcp list`: pyro should say ✓ connected"


def _fix(host: str, options: ServerOptions | None = None, config_path: Path | None = None) -> str:
    """The command that makes ``host``'s entry right, repeating every flag given
    (a file named with --config-path is repaired in place)."""
    repair = host == "opencode" or config_path is not None
    command = f"pyro host {'repair' if repair else 'connect'} {host}"
    flags = options.serve_args()[2:] if options is not None else []
    if options is not None and options.installed_package:
        flags.append("--installed-package")
    if config_path is not None:
        flags += ["--config-path", shlex.quote(str(config_path.expanduser().absolute()))]
    return " ".join([command, *flags])


def host_of_file(path: Path) -> str:
    """Whose config ``path`` is: a TOML file is Codex's; an ``opencode.json(c)``, or a
    JSON file with an ``mcp`` table, OpenCode's; one with ``mcpServers``, Claude Code's.

    Raises:
        InvalidArgument: none of these; the message says how to name the host.
    """
    fixed = path.expanduser()
    name = fixed.name.lower()
    if name.endswith(".toml"):
        return "codex"
    if name.startswith("opencode.json"):
        return "opencode"
    try:
        text = fixed.read_text(errors="replace")[:1_000_000] if fixed.is_file() else ""
    except OSError:
        text = ""
    if '"mcpServers"' in text or name in (".claude.json", ".mcp.json"):
        return "claude-code"
    if '"mcp"' in text:
        return "opencode"
    raise InvalidArgument(
        "--config-path",
        f"cannot tell whose config {fixed} is (a .toml is Codex's, opencode.json OpenCode's, "
        "a JSON file with mcpServers Claude Code's); name the host: "
        f"`pyro host doctor codex --config-path {fixed}`",
    )


__all__ = ["HOSTS", "connect", "doctor", "health_check", "print_config", "repair"]
