"""Registering a ``pyro server``'s ``/mcp`` endpoint as a host's own HTTP transport.

No local process: the host speaks Streamable HTTP to the server itself, with
the token in a header the host fills from an environment variable at start.
Only the variable's name is ever written. Each host's form, checked with its
own CLI:

- Claude Code: ``claude mcp add --transport http NAME URL --header
  'Authorization: Bearer ${VAR}'`` (it expands ``${VAR}`` when it connects);
- Codex: ``codex mcp add NAME --url URL --bearer-token-env-var VAR``;
- OpenCode (no ``mcp add``): ``"type": "remote"`` with ``"headers":
  {"Authorization": "Bearer {env:VAR}"}`` in its config file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pyro_mcp.errors import InvalidArgument
from pyro_mcp.hosts.configs import OpenCode, backup, get_host
from pyro_mcp.hosts.server_command import SERVER_NAME, ServerOptions

HEALTH_TIMEOUT_SECONDS = 30.0


def endpoint(options: ServerOptions) -> tuple[str, str]:
    """The ``/mcp`` URL (with a mode or profile, if given) and the token variable."""
    if not options.remote:
        raise InvalidArgument("--transport", "http goes with --remote URL")
    selection = options.mode or options.profile
    url = options.remote.rstrip("/") + "/mcp" + (f"/{selection}" if selection else "")
    return url, options.token_env or "PYRO_TOKEN"


def snippet(host: str, url: str, var: str) -> str:
    if host == "codex":
        return f'[mcp_servers.{SERVER_NAME}]\nurl = "{url}"\nbearer_token_env_var = "{var}"\n'
    if host == "opencode":
        entry = _opencode_entry(url, var)
        return json.dumps({"mcp": {SERVER_NAME: entry}}, indent=2)
    header = {"Authorization": f"Bearer ${{{var}}}"}
    entry = {"type": "http", "url": url, "headers": header}
    return json.dumps({"mcpServers": {SERVER_NAME: entry}}, indent=2)


def connect(
    host: str, options: ServerOptions, *, scope: str, project: Path, run_host: Any, cli: Path
) -> dict[str, Any]:
    """Register the HTTP endpoint with ``host`` through its CLI (OpenCode: its file)."""
    url, var = endpoint(options)
    config = get_host(host)
    if host == "claude-code":
        remove = [str(cli), "mcp", "remove", "-s", scope, SERVER_NAME]
        header = f"Authorization: Bearer ${{{var}}}"
        add = [str(cli), "mcp", "add", "--transport", "http", "-s", scope, SERVER_NAME, url]
        add += ["--header", header]
    elif host == "codex":
        remove = [str(cli), "mcp", "remove", SERVER_NAME]
        add = [str(cli), "mcp", "add", SERVER_NAME, "--url", url, "--bearer-token-env-var", var]
    else:
        raise InvalidArgument("host", f"{host} is edited in place: use write_opencode")
    run_host(remove, project, check=False)
    said = run_host(add, project, check=True)
    how = " ".join(add[1:])
    result = _result(host, scope, url, var, config.config_path(scope, project), how)
    return {**result, "host_said": said.strip()[-500:]}


def write_opencode(options: ServerOptions, *, scope: str, project: Path) -> dict[str, Any]:
    """OpenCode has no ``mcp add``: its config file gets the remote entry, kept
    comments and all, after a backup."""
    import json5
    from json5.dumper import ModelDumper

    import pyro_mcp.hosts.configs as configs

    url, var = endpoint(options)
    config = get_host("opencode")
    assert isinstance(config, OpenCode)
    config.check_scope(scope)
    path = config.config_path(scope, project)
    document = config._load(path)  # refuses an unparseable file before any backup
    saved = backup(path)
    root = document.value
    entry = _opencode_entry(url, var)
    mcp = configs._model_member(root, "mcp")
    if mcp is None:
        configs._model_add(root, "mcp", {SERVER_NAME: entry})
    elif configs._model_member(mcp, SERVER_NAME) is None:
        configs._model_add(mcp, SERVER_NAME, entry)
    else:
        configs._model_set(mcp, SERVER_NAME, entry)
    configs._replace(path, json5.dumps(document, dumper=ModelDumper()))  # type: ignore[arg-type]
    result = _result("opencode", scope, url, var, path, "edited the config file")
    result["backup"] = str(saved) if saved else None
    return result


def health_check(url: str, var: str) -> dict[str, Any]:
    """An MCP handshake with the endpoint, the token taken from ``$var`` as the host will."""
    import anyio
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    from mcp import ClientSession

    token = os.environ.get(var)
    started = time.monotonic()
    if not token:
        return {
            "ok": False,
            "ms": 0,
            "error": f"${var} is not set here: export it (the token from `pyro server token "
            "create`) in the shell the host starts from",
        }

    async def handshake() -> int:
        headers = {"Authorization": f"Bearer {token}"}
        with anyio.fail_after(HEALTH_TIMEOUT_SECONDS):
            async with (
                httpx2.AsyncClient(headers=headers, trust_env=False) as http,
                streamable_http_client(url, http_client=http) as streams,
                ClientSession(streams[0], streams[1]) as session,
            ):
                await session.initialize()
                return len((await session.list_tools()).tools)

    try:
        tools = anyio.run(handshake)
    except BaseException as exc:  # the endpoint's failure, whatever form it takes
        if isinstance(exc, KeyboardInterrupt):
            raise
        return {
            "ok": False,
            "ms": int((time.monotonic() - started) * 1000),
            "error": f"{url} did not complete an MCP handshake: {_reason(exc)}",
        }
    return {"ok": True, "ms": int((time.monotonic() - started) * 1000), "tools": tools}


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:500]


def _opencode_entry(url: str, var: str) -> dict[str, Any]:
    header = {"Authorization": f"Bearer {{env:{var}}}"}
    return {"type": "remote", "url": url, "headers": header, "enabled": True}


def _result(host: str, scope: str, url: str, var: str, path: Path, how: str) -> dict[str, Any]:
    return {
        "host": host,
        "scope": scope,
        "transport": "http",
        "url": url,
        "token_env": var,
        "config_path": str(path),
        "how": how,
        "health": health_check(url, var),
    }
