"""Workspace secrets: stored 0600 on the host, redacted from everything shown.

Values live only in files under the workspace folder (``secrets/NAME``, 0600
in a 0700 directory) and, inside the guest, on the tmpfs ``/run/pyro-secrets``.
They never go into SQLite, the journal, logs or events. Every output that
leaves the service layer passes through ``Redactor``, which replaces each
value with ``[REDACTED:NAME]``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyro_mcp.egress import rewrite
from pyro_mcp.errors import InvalidArgument

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_SECRET_BYTES = 64 * 1024
MAX_SECRETS = 64
# Shorter values would redact ordinary text everywhere; they are refused.
MIN_SECRET_BYTES = 4


def check_name(name: str, field: str = "secret") -> str:
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise InvalidArgument(
            field, f"{name!r} is not a valid name: letters, digits and _, not starting with a digit"
        )
    return name


# A secret given with the hosts that get its real value: {"value"|"path": ..., "hosts": [...]}.
SecretSpec = str | Path | Mapping[str, Any]


def collect(
    literal: Mapping[str, SecretSpec] | None, files: Mapping[str, SecretSpec] | None
) -> dict[str, bytes]:
    """Secret values from literals and host files, validated."""
    values: dict[str, bytes] = {}
    for name, literal_value in (literal or {}).items():
        values[check_name(name)] = str(_unwrap(name, literal_value, "value", "secrets")).encode(
            "utf-8"
        )
    for name, spec in (files or {}).items():
        check_name(name, "secret_file")
        if name in values:
            raise InvalidArgument("secret_file", f"secret {name} is given twice")
        path = _unwrap(name, spec, "path", "secret_files")
        try:
            values[name] = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise InvalidArgument("secret_file", f"cannot read {path}: {exc.strerror}") from exc
    if len(values) > MAX_SECRETS:
        raise InvalidArgument("secret", f"at most {MAX_SECRETS} secrets")
    for name, secret in values.items():
        if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
            raise InvalidArgument(
                "secret", f"{name}: a secret must be {MIN_SECRET_BYTES} bytes to 64 KiB long"
            )
    return values


def bound_hosts(*specs: Mapping[str, SecretSpec] | None) -> dict[str, list[str]]:
    """Secret name -> the hosts its ``hosts`` list names (only secrets given with one)."""
    bound: dict[str, list[str]] = {}
    for group in specs:
        for name, spec in (group or {}).items():
            if isinstance(spec, Mapping):
                hosts = spec.get("hosts")
                if not isinstance(hosts, list | tuple) or not all(
                    isinstance(h, str) for h in hosts
                ):
                    raise InvalidArgument("secrets", f"{name}: hosts must be a list of host names")
                bound[name] = list(hosts)
    return bound


def _unwrap(name: str, spec: SecretSpec, key: str, field: str) -> str | Path:
    if not isinstance(spec, Mapping):
        return spec
    unknown = set(spec) - {key, "hosts"}
    if unknown or not isinstance(spec.get(key), str | Path):
        raise InvalidArgument(
            field,
            f"{name}: give a {key} string, or {{{key!r}: ..., 'hosts': [...]}} to send the real "
            "value only to those hosts"
            + (f" (unknown keys: {', '.join(sorted(map(str, unknown)))})" if unknown else ""),
        )
    value: str | Path = spec[key]
    return value


SECRETS_LIST_FORMS = (
    'secrets={"NAME": "value"} (or {"NAME": {"value": ..., "hosts": [...]}}) with '
    'secret_files={"NAME": "path"}, or pyro-mcp 4.5\'s list: '
    '[{"name": "NAME", "value": "..."}, {"name": "NAME", "file_path": "path"}] '
    '(each may add "hosts": [...])'
)


def from_list(
    items: Any, files: Mapping[str, SecretSpec] | None
) -> tuple[dict[str, SecretSpec], dict[str, SecretSpec]]:
    """pyro-mcp 4.5's list of secrets as (literal secrets, secret files), merged with
    ``files``; InvalidArgument naming the accepted forms for anything else."""
    literal: dict[str, SecretSpec] = {}
    from_files: dict[str, SecretSpec] = dict(files or {})
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise InvalidArgument("secrets", f"give {SECRETS_LIST_FORMS}")
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise InvalidArgument("secrets", f"{item!r}: give {SECRETS_LIST_FORMS}")
        name = item["name"]
        kinds = [key for key in ("value", "file_path") if key in item]
        unknown = set(item) - {"name", "value", "file_path", "hosts"}
        if len(kinds) != 1 or unknown or not isinstance(item[kinds[0]], str | Path):
            raise InvalidArgument("secrets", f"{name}: give {SECRETS_LIST_FORMS}")
        target = literal if kinds[0] == "value" else from_files
        if name in literal or name in from_files:
            raise InvalidArgument("secrets", f"secret {name} is given twice")
        key = "value" if kinds[0] == "value" else "path"
        spec: SecretSpec = item[kinds[0]]
        if "hosts" in item:
            spec = {key: item[kinds[0]], "hosts": item["hosts"]}
        target[name] = spec
    return literal, from_files


def store(folder: Path, values: Mapping[str, bytes]) -> None:
    """Write values as 0600 files in a 0700 directory (created with those modes)."""
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    for name, value in values.items():
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(value)


def load(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        return {}
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


SECRET_ENV_FORMS = (
    'a list of "NAME[:ENV_VAR]" strings, or a mapping {"ENV_VAR": "SECRET_NAME"} '
    '(pyro-mcp 4.5: {"API_TOKEN": "API_TOKEN"})'
)


def parse_secret_env(
    specs: Sequence[str] | Mapping[str, str], known: Sequence[str]
) -> dict[str, str]:
    """Which secret goes into which variable, as {ENV_VAR: NAME}: from ``NAME[:ENV_VAR]``
    strings, or from pyro-mcp 4.5's mapping of variable to secret name."""
    if isinstance(specs, Mapping):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in specs.items()):
            raise InvalidArgument("secret_env", f"give {SECRET_ENV_FORMS}")
        specs = [f"{name}:{variable}" for variable, name in specs.items()]
    elif isinstance(specs, str | bytes) or not all(isinstance(spec, str) for spec in specs):
        raise InvalidArgument("secret_env", f"{specs!r}: give {SECRET_ENV_FORMS}")
    mapping: dict[str, str] = {}
    for spec in specs:
        name, _, variable = str(spec).partition(":")
        check_name(name, "secret_env")
        check_name(variable or name, "secret_env")
        if name not in known:
            have = ", ".join(known) or "none"
            raise InvalidArgument(
                "secret_env", f"the workspace has no secret {name!r} (it has: {have})"
            )
        mapping[variable or name] = name
    return mapping


class Redactor:
    """Replaces secret values in outputs; also knows how much of a tail to hold back."""

    def __init__(self, values: Mapping[str, bytes]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._values = sorted(values.items(), key=lambda item: -len(item[1]))

    def __bool__(self) -> bool:
        return bool(self._values)

    def redact_bytes(self, data: bytes) -> bytes:
        for name, value in self._values:
            data = data.replace(value, f"[REDACTED:{name}]".encode())
        return data

    def redact_text(self, text: str) -> str:
        if not self._values:
            return text
        for name, value in self._values:
            text = text.replace(value.decode("utf-8", errors="replace"), f"[REDACTED:{name}]")
        return text

    def held_back(self, data: bytes) -> int:
        """How many trailing bytes of ``data`` could begin a secret (to send later)."""
        return rewrite.held_back(data, (value for _, value in self._values))
