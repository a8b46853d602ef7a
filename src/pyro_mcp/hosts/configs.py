"""Where each chat host keeps its MCP servers, and reading and rewriting pyro's entry.

Rewrites keep everything else in the file: other servers, other settings, and
(where the format has them) comments and formatting. TOML goes through
``tomlkit`` and JSONC through ``json-five``'s model, both of which round-trip
a document unchanged except where it is edited; Claude Code's files are plain
JSON with no comments to keep. Both libraries load on first use: together they
take ~0.2 s to import, which every other pyro command would otherwise pay.
Every rewrite backs the file up first, writes a temporary file and renames it
over the original, keeping its mode.
"""

from __future__ import annotations

import abc
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_mcp.errors import HostSetupError, InvalidArgument
from pyro_mcp.hosts.server_command import SERVER_NAME

SCOPES = ("user", "project", "local")


@dataclass(frozen=True)
class Entry:
    """A host's MCP server entry for pyro, normalised across formats."""

    command: str
    args: list[str]
    cwd: str | None = None
    # The host's own HTTP transport to a `pyro server` (no command): its URL and
    # the variable the token header is filled from.
    url: str | None = None
    token_env: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.url is not None:
            return {"url": self.url, "token_env": self.token_env}
        return {"command": self.command, "args": self.args, "cwd": self.cwd}


class HostConfig(abc.ABC):
    """One chat host's MCP configuration."""

    name = ""
    cli: str | None = None  # the host's own command, when it has one
    package = ""  # the npm package of that command
    scopes: tuple[str, ...] = ("user",)

    def __init__(self, home: Path) -> None:
        self.home = home

    def check_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise InvalidArgument(
                "--scope", f"{self.name} supports {', '.join(self.scopes)}, not {scope}"
            )

    @abc.abstractmethod
    def config_path(self, scope: str, project: Path) -> Path:
        """The file that holds pyro's entry in ``scope``."""

    @abc.abstractmethod
    def read(self, scope: str, project: Path) -> Entry | None:
        """Pyro's entry, or None; HostSetupError when the file cannot be parsed."""

    @abc.abstractmethod
    def write(self, scope: str, project: Path, command: str, args: list[str]) -> Path:
        """Set pyro's entry, keeping everything else; returns the file written."""

    @abc.abstractmethod
    def snippet(self, command: str, args: list[str]) -> str:
        """The exact text to paste into the host's config."""

    def server_cwd(self, entry: Entry | None, project: Path) -> Path:
        """The directory the host starts the server in."""
        return Path(entry.cwd) if entry and entry.cwd else project


# ------------------------------------------------------------------ Claude Code


class ClaudeCode(HostConfig):
    name = "claude-code"
    cli = "claude"
    package = "@anthropic-ai/claude-code"
    scopes = SCOPES

    def config_path(self, scope: str, project: Path) -> Path:
        # user and local scopes both live in ~/.claude.json; project in .mcp.json.
        return project / ".mcp.json" if scope == "project" else self.home / ".claude.json"

    def _servers(self, data: dict[str, Any], scope: str, project: Path) -> Any:
        if scope == "local":
            return ((data.get("projects") or {}).get(str(project)) or {}).get("mcpServers") or {}
        return data.get("mcpServers") or {}

    def read(self, scope: str, project: Path) -> Entry | None:
        path = self.config_path(scope, project)
        raw = _load_json(path)
        found = self._servers(raw, scope, project).get(SERVER_NAME)
        return _entry(found, path)

    def write(self, scope: str, project: Path, command: str, args: list[str]) -> Path:
        path = self.config_path(scope, project)
        data = _load_json(path)
        holder = data
        if scope == "local":
            holder = data.setdefault("projects", {}).setdefault(str(project), {})
        servers = holder.setdefault("mcpServers", {})
        servers[SERVER_NAME] = {"type": "stdio", "command": command, "args": args, "env": {}}
        _replace(path, json.dumps(data, indent=2) + "\n")
        return path

    def snippet(self, command: str, args: list[str]) -> str:
        entry = {"type": "stdio", "command": command, "args": args, "env": {}}
        return json.dumps({"mcpServers": {SERVER_NAME: entry}}, indent=2)


# ------------------------------------------------------------------------ Codex


class Codex(HostConfig):
    name = "codex"
    cli = "codex"
    package = "@openai/codex"
    scopes = ("user",)

    def config_path(self, scope: str, project: Path) -> Path:
        return self.home / ".codex" / "config.toml"

    def _load(self, path: Path) -> Any:
        import tomlkit
        from tomlkit.exceptions import TOMLKitError

        try:
            return tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
        except (TOMLKitError, UnicodeDecodeError) as exc:
            raise _invalid(path, "TOML", exc) from exc
        except OSError as exc:
            raise _unreadable(path, exc) from exc

    def read(self, scope: str, project: Path) -> Entry | None:
        path = self.config_path(scope, project)
        found = self._load(path).get("mcp_servers", {}).get(SERVER_NAME)
        return _entry(found.unwrap() if found is not None else None, path)

    def write(self, scope: str, project: Path, command: str, args: list[str]) -> Path:
        import tomlkit

        path = self.config_path(scope, project)
        document = self._load(path)
        servers = document.get("mcp_servers")
        if servers is None:
            servers = tomlkit.table(is_super_table=True)
            document["mcp_servers"] = servers
        table = servers.get(SERVER_NAME)
        if table is None:
            table = tomlkit.table()
            servers[SERVER_NAME] = table
        # Only the keys pyro owns change; a user's env, timeouts or cwd stay.
        table["command"] = command
        table["args"] = args
        if forwarded := _token_env(args):
            table["env_vars"] = forwarded
        _replace(path, tomlkit.dumps(document), mode=0o600)
        return path

    def snippet(self, command: str, args: list[str]) -> str:
        import tomlkit

        document = tomlkit.document()
        servers = tomlkit.table(is_super_table=True)
        table = tomlkit.table()
        table["command"] = command
        table["args"] = args
        if forwarded := _token_env(args):
            table["env_vars"] = forwarded
        servers[SERVER_NAME] = table
        document["mcp_servers"] = servers
        return tomlkit.dumps(document)

    def server_cwd(self, entry: Entry | None, project: Path) -> Path:
        # Outside a chat thread Codex starts servers in ~/.codex (measured).
        return Path(entry.cwd) if entry and entry.cwd else self.home / ".codex"


# --------------------------------------------------------------------- OpenCode


class OpenCode(HostConfig):
    name = "opencode"
    cli = "opencode"
    package = "opencode-ai"
    scopes = ("user", "project")

    def config_path(self, scope: str, project: Path) -> Path:
        folder = project if scope == "project" else self.home / ".config" / "opencode"
        for name in ("opencode.jsonc", "opencode.json"):
            if (folder / name).exists():
                return folder / name
        return folder / "opencode.json"

    def _load(self, path: Path) -> Any:
        import json5
        from json5.loader import ModelLoader

        if not path.exists():
            return json5.loads("{}", loader=ModelLoader())
        try:
            return json5.loads(path.read_text(), loader=ModelLoader())
        except UnicodeDecodeError as exc:
            raise _invalid(path, "JSONC", exc) from exc
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        except Exception as exc:  # json-five raises its own parse errors
            raise _invalid(path, "JSONC", exc) from exc

    def read(self, scope: str, project: Path) -> Entry | None:
        import json5

        path = self.config_path(scope, project)
        self._load(path)  # validates
        data = json5.loads(path.read_text()) if path.exists() else {}
        found = (data.get("mcp") or {}).get(SERVER_NAME) if isinstance(data, dict) else None
        if isinstance(found, dict) and found.get("type") == "remote" and "url" in found:
            return _http_entry(found)
        if isinstance(found, dict) and isinstance(found.get("command"), list) and found["command"]:
            command = found["command"]
            return Entry(str(command[0]), [str(a) for a in command[1:]], None)
        return None

    def write(self, scope: str, project: Path, command: str, args: list[str]) -> Path:
        import json5
        from json5.dumper import ModelDumper

        path = self.config_path(scope, project)
        document = self._load(path)
        root = document.value
        entry = {"type": "local", "command": [command, *args], "enabled": True}
        mcp = _model_member(root, "mcp")
        if mcp is None:
            _model_add(root, "mcp", {SERVER_NAME: entry})
        else:
            current = _model_member(mcp, SERVER_NAME)
            if current is None:
                _model_add(mcp, SERVER_NAME, entry)
            else:
                _model_set(mcp, SERVER_NAME, entry)
        _replace(path, json5.dumps(document, dumper=ModelDumper()))  # type: ignore[arg-type]
        return path

    def snippet(self, command: str, args: list[str]) -> str:
        entry = {"type": "local", "command": [command, *args], "enabled": True}
        return json.dumps(
            {"$schema": "https://opencode.ai/config.json", "mcp": {SERVER_NAME: entry}}, indent=2
        )


# ---------------------------------------------------------------------- generic


class Generic(HostConfig):
    """Any other MCP host: pyro knows no file of its, only the snippet to paste."""

    name = "generic"
    scopes: tuple[str, ...] = ("user",)

    def config_path(self, scope: str, project: Path) -> Path:
        raise HostSetupError(self._pasted())

    def read(self, scope: str, project: Path) -> Entry | None:
        raise HostSetupError(self._pasted())

    def write(self, scope: str, project: Path, command: str, args: list[str]) -> Path:
        raise HostSetupError(self._pasted())

    def _pasted(self) -> str:
        return (
            f"pyro does not edit {self.name}'s config; use `pyro host print-config "
            f"{self.name}` and paste the snippet into it"
        )

    def snippet(self, command: str, args: list[str]) -> str:
        return json.dumps(
            {"mcpServers": {SERVER_NAME: {"command": command, "args": args}}}, indent=2
        )


class ClaudeDesktop(Generic):
    """Claude Desktop: the `mcpServers` form in a file pyro names but does not edit."""

    name = "claude-desktop"

    def config_path(self, scope: str, project: Path) -> Path:
        if sys.platform == "darwin":
            return self.home / "Library" / "Application Support" / "Claude" / CLAUDE_DESKTOP_FILE
        if sys.platform == "win32":
            appdata = Path(os.environ.get("APPDATA") or self.home / "AppData" / "Roaming")
            return appdata / "Claude" / CLAUDE_DESKTOP_FILE
        return self.home / ".config" / "Claude" / CLAUDE_DESKTOP_FILE


class Cursor(Generic):
    """Cursor: the `mcpServers` form in a file pyro names but does not edit."""

    name = "cursor"
    scopes = ("user", "project")

    def config_path(self, scope: str, project: Path) -> Path:
        return (project if scope == "project" else self.home) / ".cursor" / "mcp.json"


CLAUDE_DESKTOP_FILE = "claude_desktop_config.json"

HOSTS: dict[str, type[HostConfig]] = {
    "claude-code": ClaudeCode,
    "codex": Codex,
    "opencode": OpenCode,
    "claude-desktop": ClaudeDesktop,
    "cursor": Cursor,
    "generic": Generic,
}


def _token_env(args: list[str]) -> list[str]:
    """The variable a bridge reads its token from: Codex starts servers with a
    short list of the user's variables and forwards others only by name
    (``env_vars``); the token itself is never written."""
    if "--token-env" in args[:-1]:
        return [args[args.index("--token-env") + 1]]
    return []


def get_host(name: str, home: Path | None = None, config_path: Path | None = None) -> HostConfig:
    """The host called ``name`` (its file at ``config_path`` instead of where the
    host keeps it, when given); InvalidArgument listing the valid ones otherwise."""
    if name not in HOSTS:
        raise InvalidArgument("host", f"{name!r} is not a host pyro knows; use {', '.join(HOSTS)}")
    config = HOSTS[name](home or Path.home())
    if config_path is not None:
        fixed = config_path.expanduser().absolute()
        if fixed.is_dir():
            raise InvalidArgument("--config-path", f"{fixed} is a folder; name the file")
        config.config_path = lambda scope, project: fixed  # type: ignore[method-assign]
    return config


# ---------------------------------------------------------------------- helpers


def _entry(found: Any, path: Path) -> Entry | None:
    if not isinstance(found, dict):
        return None
    if isinstance(found.get("url"), str) and "command" not in found:
        return _http_entry(found)
    command = found.get("command")
    args = found.get("args") or []
    if not isinstance(command, str) or not isinstance(args, list):
        return Entry(str(command), [str(a) for a in args] if isinstance(args, list) else [], None)
    cwd = found.get("cwd")
    return Entry(command, [str(a) for a in args], str(cwd) if cwd else None)


def _http_entry(found: dict[str, Any]) -> Entry:
    """An HTTP-transport entry: Claude Code's header ``Bearer ${VAR}``, OpenCode's
    ``Bearer {env:VAR}``, or Codex's ``bearer_token_env_var``."""
    var = found.get("bearer_token_env_var")
    headers = found.get("headers")
    header = headers.get("Authorization") if isinstance(headers, dict) else None
    if isinstance(header, str):
        match = re.fullmatch(r"Bearer (?:\$\{(\w+)\}|\{env:(\w+)\})", header.strip())
        var = (match.group(1) or match.group(2)) if match else None
    return Entry(
        "", [], None, url=str(found["url"]), token_env=var if isinstance(var, str) else None
    )


def _load_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(path, "JSON", exc) from exc
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    if not isinstance(data, dict):
        raise _invalid(path, "JSON", ValueError("the top level is not an object"))
    return data


def _invalid(path: Path, kind: str, exc: Exception) -> HostSetupError:
    return HostSetupError(
        f"{path} is not valid {kind} ({str(exc).splitlines()[0][:200]}); nothing was written. "
        "Fix the file (or move it away) and run the command again."
    )


def _unreadable(path: Path, exc: OSError) -> HostSetupError:
    return HostSetupError(f"cannot read {path}: {exc.strerror or exc}; nothing was written")


def backup(path: Path) -> Path | None:
    """A timestamped copy of ``path`` beside it (None when it does not exist)."""
    if not path.exists():
        return None
    target = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%dT%H%M%S')}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%dT%H%M%S')}-{counter}")
        counter += 1
    shutil.copy2(path, target)
    return target


def _replace(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` atomically, keeping its mode (or ``mode`` when new)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        keep = path.stat().st_mode & 0o777 if path.exists() else (mode or 0o644)
        tmp = path.with_name(f".{path.name}.pyro-tmp")
        tmp.write_text(text)
        os.chmod(tmp, keep)
        tmp.replace(path)
    except OSError as exc:
        raise HostSetupError(
            f"cannot write {path}: {exc.strerror or exc}; the file was not changed"
        ) from exc


# json-five's model: an object holds parallel ``keys`` and ``values`` lists; each
# node carries the whitespace and comments around it, which the dumper writes back.


def _model_member(node: Any, key: str) -> Any:
    for name, value in zip(getattr(node, "keys", []), getattr(node, "values", []), strict=False):
        if getattr(name, "characters", None) == key:
            return value
    return None


def _model_node(value: Any) -> Any:
    import json5
    from json5.loader import ModelLoader

    return json5.loads(json.dumps(value), loader=ModelLoader()).value


def _model_set(node: Any, key: str, value: Any) -> None:
    for index, name in enumerate(node.keys):
        if getattr(name, "characters", None) == key:
            old = node.values[index]
            new = _model_node(value)
            new.wsc_before, new.wsc_after = old.wsc_before, old.wsc_after
            node.values[index] = new
            return


def _model_add(node: Any, key: str, value: Any) -> None:
    from json5.model import JSONObject

    if not isinstance(node, JSONObject):
        raise HostSetupError("the config's top level (or its mcp) is not an object")
    holder = _model_node({key: value})
    name, member = holder.keys[0], holder.values[0]
    # Indent like the members already there (or two spaces in an empty object).
    indent = "\n  "
    for space in [*node.leading_wsc, *(node.keys[0].wsc_before if node.keys else [])]:
        if isinstance(space, str) and "\n" in space:
            indent = "\n" + space.rsplit("\n", 1)[1]
            break
    name.wsc_before = [indent]
    member.wsc_before = [" "]
    node.keys.append(name)
    node.values.append(member)
