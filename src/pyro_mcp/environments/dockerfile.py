"""Reading a Dockerfile into steps ``pyro env build`` runs in a guest.

Supported: ``FROM`` (one stage), ``RUN`` (shell and exec form), ``COPY`` and
``ADD`` of local files (``--chown``, ``--chmod``), ``ENV``, ``ARG``,
``WORKDIR``, ``USER``, ``LABEL``, ``EXPOSE`` (recorded), ``ENTRYPOINT`` and
``CMD`` (recorded, not run). Line continuations, comments and ``$VAR``,
``${VAR}``, ``${VAR:-word}``, ``${VAR:+word}`` substitution work as Docker's
reference describes. Anything else is a ``DockerfileError`` naming the line.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_mcp.errors import InvalidArgument

SUPPORTED = (
    "FROM",
    "RUN",
    "COPY",
    "ADD",
    "ENV",
    "ARG",
    "WORKDIR",
    "USER",
    "LABEL",
    "EXPOSE",
    "ENTRYPOINT",
    "CMD",
)
NOT_SUPPORTED = {
    "HEALTHCHECK": "health checks are not run by pyro",
    "ONBUILD": "ONBUILD triggers are not supported",
    "SHELL": "SHELL is not supported; RUN uses /bin/sh -c (or use the exec form)",
    "STOPSIGNAL": "STOPSIGNAL is not supported",
    "VOLUME": "VOLUME is not supported; a workspace's /workspace is its volume",
    "MAINTAINER": "MAINTAINER is deprecated; use LABEL maintainer=...",
}
_VARIABLE = re.compile(
    r"\\\$|\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class DockerfileError(InvalidArgument):
    """A Dockerfile pyro cannot build, with the line that says why."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__("file", f"{path}:{line}: {message}")
        self.line = line


@dataclass
class Step:
    """One instruction, with its arguments after substitution."""

    line: int
    instruction: str
    text: str  # as written (continuations joined)
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def changes_disk(self) -> bool:
        return self.instruction in ("RUN", "COPY", "ADD")


@dataclass
class Dockerfile:
    path: Path
    base: str
    steps: list[Step]
    unused_build_args: list[str]


def parse(path: Path, build_args: dict[str, str] | None = None) -> Dockerfile:
    """``path`` read into steps; ``build_args`` override ``ARG`` defaults.

    Raises:
        DockerfileError: a syntax error or an unsupported instruction (line named).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument("file", f"cannot read {path}: {exc}") from exc
    given = dict(build_args or {})
    used: set[str] = set()
    args: dict[str, str] = {}  # ARGs in scope
    env: dict[str, str] = {}  # ENVs so far
    base = ""
    steps: list[Step] = []
    for line, raw in _logical_lines(text):
        keyword, _, rest = raw.strip().partition(" ")
        if not rest.strip() and keyword.upper() not in ("RUN",):
            rest = ""
        instruction = keyword.upper()
        rest = rest.strip()

        def fail(message: str, at: int = line) -> DockerfileError:
            return DockerfileError(path, at, message)

        if instruction in NOT_SUPPORTED:
            raise fail(f"{instruction}: {NOT_SUPPORTED[instruction]}")
        if instruction not in SUPPORTED:
            raise fail(f"unknown instruction {keyword!r} (pyro builds: {', '.join(SUPPORTED)})")
        if not rest:
            raise fail(f"{instruction} needs arguments")
        scope = {**args, **env}

        def sub(value: str, scope: dict[str, str] = scope) -> str:
            return _substitute(value, scope, fail)

        if instruction == "ARG":
            name, has_default, default = rest.partition("=")
            name = name.strip()
            if not _KEY.match(name) or " " in rest.split("=", 1)[0].strip():
                raise fail(f"ARG takes one NAME[=default], not {rest!r}")
            value = given[name] if name in given else sub(_unquote(default)) if has_default else ""
            if name in given:
                used.add(name)
            if name in given or has_default:
                args[name] = value
            else:
                args.setdefault(name, "")
            continue
        if instruction == "FROM":
            if base:
                raise fail("a second FROM: multi-stage builds are not supported")
            words = rest.split()
            if any(word.startswith("--") for word in words):
                raise fail("FROM flags (--platform) are not supported; images are linux/amd64")
            if len(words) == 3 and words[1].upper() == "AS":
                words = words[:1]
            if len(words) != 1:
                raise fail("FROM takes one image (FROM NAME [AS stage])")
            base = sub(words[0])
            if not base:
                raise fail("FROM names no image")
            steps.append(Step(line, "FROM", raw, {"image": base}))
            continue
        if not base:
            raise fail(f"{instruction} before FROM")
        step = Step(line, instruction, raw)
        if instruction == "RUN":
            if rest.startswith("--"):
                raise fail("RUN flags (--mount, --network, ...) are not supported")
            step.args = {"argv": _command(rest, fail)}
        elif instruction in ("COPY", "ADD"):
            step.args = _copy(instruction, rest, sub, fail)
        elif instruction == "ENV":
            pairs = _pairs(rest, sub, fail, legacy=True)
            env.update(pairs)
            step.args = {"env": pairs}
        elif instruction == "LABEL":
            step.args = {"labels": _pairs(rest, sub, fail, legacy=False)}
        elif instruction == "WORKDIR":
            step.args = {"path": sub(_unquote(rest))}
        elif instruction == "USER":
            user = sub(rest)
            if not user or " " in user:
                raise fail("USER takes one user[:group]")
            step.args = {"user": user}
        elif instruction == "EXPOSE":
            step.args = {"ports": [sub(word) for word in rest.split()]}
        else:  # ENTRYPOINT, CMD
            step.args = {"argv": _command(rest, fail)}
        step.args["scope_args"] = dict(args)
        steps.append(step)
    if not base:
        raise DockerfileError(path, 1, "no FROM: the file names no image to start from")
    return Dockerfile(path, base, steps, sorted(set(given) - used))


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Instructions with continuations joined and comments dropped: (first line, text)."""
    out: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue  # a comment (even inside a continuation), or a blank line between
        if not current:
            start = number
        if stripped.endswith("\\"):
            current.append(stripped[:-1])
            continue
        current.append(stripped)
        out.append((start, " ".join(part.strip() for part in current if part.strip())))
        current = []
    if current:
        out.append((start, " ".join(part.strip() for part in current if part.strip())))
    return out


def _substitute(value: str, scope: dict[str, str], fail: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "\\$":
            return "$"
        name = match.group(1) or match.group(4)
        known = scope.get(name, "")
        if match.group(2) == "-":
            return known or match.group(3)
        if match.group(2) == "+":
            return match.group(3) if known else ""
        return known

    if "${" in value and not re.search(r"\$\{[^}]*\}", value):
        raise fail(f"unclosed ${{ in {value!r}")
    return _VARIABLE.sub(replace, value)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _command(rest: str, fail: Any) -> list[str]:
    """The exec form (a JSON array of strings) or the shell form (``/bin/sh -c``)."""
    if rest.startswith("["):
        try:
            argv = json.loads(rest)
        except ValueError:
            argv = None
        if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
            return argv
        if rest.rstrip().endswith("]"):
            raise fail(f"the exec form must be a JSON array of strings: {rest}")
    return ["/bin/sh", "-c", rest]


def _pairs(rest: str, sub: Any, fail: Any, *, legacy: bool) -> dict[str, str]:
    """``K=V K2="v 2"``; for ENV also the old ``K V`` form."""
    try:
        words = shlex.split(rest, posix=True)
    except ValueError as exc:
        raise fail(f"cannot split {rest!r}: {exc}") from exc
    if legacy and words and "=" not in words[0]:
        key, _, value = rest.partition(" ")
        if not _KEY.match(key):
            raise fail(f"bad name {key!r}")
        return {key: sub(value.strip())}
    pairs: dict[str, str] = {}
    for word in words:
        key, has_value, value = word.partition("=")
        if not has_value or not key or (legacy and not _KEY.match(key)):
            raise fail(f"expected NAME=value, not {word!r}")
        pairs[key] = sub(value)
    return pairs


def _copy(instruction: str, rest: str, sub: Any, fail: Any) -> dict[str, Any]:
    chown = chmod = None
    if rest.startswith("["):
        try:
            words = json.loads(rest)
        except ValueError as exc:
            raise fail(f"{instruction}'s JSON form must be an array of strings") from exc
    else:
        try:
            words = shlex.split(rest, posix=True)
        except ValueError as exc:
            raise fail(f"cannot split {rest!r}: {exc}") from exc
    while words and words[0].startswith("--"):
        flag, _, value = words.pop(0).partition("=")
        if flag == "--chown" and value:
            chown = sub(value)
        elif flag == "--chmod" and re.fullmatch(r"[0-7]{3,4}", value):
            chmod = int(value, 8)
        elif flag == "--from":
            raise fail(f"{instruction} --from (multi-stage) is not supported")
        else:
            raise fail(f"{instruction} flag {flag} is not supported (--chown, --chmod are)")
    if len(words) < 2:
        raise fail(f"{instruction} needs a source and a destination")
    sources, dest = [sub(word) for word in words[:-1]], sub(words[-1])
    for source in sources:
        if re.match(r"^[a-z][a-z0-9+.-]*://", source):
            raise fail(f"{instruction} of a URL ({source}) is not supported; RUN curl or wget it")
        if instruction == "ADD" and re.search(r"\.(tar|tgz|tar\.(gz|bz2|xz|zst))$", source):
            raise fail(
                "ADD of a local archive (extracted by Docker) is not supported; COPY it and RUN tar"
            )
        if any(char in source for char in "*?["):
            raise fail(f"wildcards in {instruction} sources are not supported ({source})")
    return {"sources": sources, "dest": dest, "chown": chown, "chmod": chmod}
