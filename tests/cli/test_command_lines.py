"""Every `pyro` command line the help and the docs show parses as written.

The lines come from every parser's epilog (``pyro ... --help``), and from the
shell blocks of README.md, docs/ and examples/ (a ``sh``/``bash`` block's
lines, or ``$ ``-prompted lines of any block). Each goes through the CLI's own
parser (``cli.main.parse``) the way `pyro` would take it: a line the parser
refuses fails here, naming its page. Shell operators end a line's words
(``pyro ... | jq``), ``# ...`` is a comment, ``\\`` continues a line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_mcp.cli.main import build_parser, parse

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "examples").glob("*.md")),
]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
SHELL_BLOCKS = {"sh", "bash", "shell", "zsh"}
# `pyro ...`, after an optional prompt, VAR=value assignments, sudo, `uv run`
# or `uvx --from X`.
COMMAND = re.compile(
    r"^(?:\$\s+)?(?:[A-Z_]+=\S*\s+)*(?:sudo\s+)?(?:uv run |uvx (?:--from \S+ )?)?(pyro\s.*)$"
)
# In an epilog, two spaces or more end the command and start its comment.
EPILOG_LINE = re.compile(r"\s+(pyro\s.*?)(?:\s{2,}\S.*)?$")
OPERATORS = {"|", "||", "&&", ";", ">", ">>", "&", "<", ")", "2>&1"}


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _joined(text: str) -> Iterator[str]:
    """``text``'s lines with ``\\`` continuations and multi-line quotes joined."""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        try:
            shlex.split(line, comments=True)
        except ValueError:  # a quote that closes on a later line
            pending = line + "\n"
            continue
        pending = ""
        yield line


def help_lines() -> list[tuple[str, str]]:
    found: dict[str, str] = {}
    for parser in _parsers(build_parser()):
        for line in _joined(parser.epilog or ""):
            match = EPILOG_LINE.match(line)
            if match:
                found.setdefault(match.group(1), f"`{parser.prog} --help`")
    return [(where, line) for line, where in found.items()]


def doc_lines() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for block in FENCE.finditer(page.read_text()):
            for line in _joined(block.group(2)):
                line = line.strip()
                if block.group(1) not in SHELL_BLOCKS and not line.startswith("$ "):
                    continue
                match = COMMAND.match(line)
                if match:
                    found.append((str(page.relative_to(ROOT)), match.group(1)))
    return found


def words(line: str) -> list[str]:
    """The words `pyro` gets from ``line`` (without ``pyro`` itself)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    taken = []
    for word in lexer:
        if word in OPERATORS:
            break
        taken.append(word)
    return taken[1:]


def parsed(line: str) -> argparse.Namespace:
    """``line``'s arguments; for `--version` and `--help`, which answer while
    parsing, a namespace holding only ``answered``."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            return parse(build_parser(), words(line))
    except SystemExit as exc:
        if exc.code == 0:
            return argparse.Namespace(answered=True)
        raise AssertionError(f"{line!r}: {errors.getvalue().strip()}") from exc


def _runs(args: argparse.Namespace) -> bool:
    return getattr(args, "handler", None) is not None or getattr(args, "answered", False)


def test_there_are_command_lines_to_check() -> None:
    assert len(help_lines()) > 80 and len(doc_lines()) > 150


@pytest.mark.parametrize(("where", "line"), help_lines(), ids=lambda value: value[:80])
def test_every_help_example_parses(where: str, line: str) -> None:
    assert _runs(parsed(line)), f"{where}: {line} names no command"


@pytest.mark.parametrize(("where", "line"), doc_lines(), ids=lambda value: value[:80])
def test_every_documented_command_line_parses(where: str, line: str) -> None:
    assert _runs(parsed(line)), f"{where}: {line} names no command"


@pytest.mark.parametrize(
    "line",
    [
        "pyro env build app:1 --file ci/Dockerfile ./service --build-arg VERSION=2",
        "pyro env build app:1 ./service --file ci/Dockerfile --build-arg VERSION=2",
        "pyro env build app:1 --build-arg VERSION=2 ./service -f ci/Dockerfile",
    ],
)
def test_env_build_takes_its_context_before_or_after_the_options(line: str) -> None:
    args = parsed(line)
    assert (args.name, args.context, args.file) == ("app:1", "./service", "ci/Dockerfile")
    assert args.build_arg == ["VERSION=2"]


def test_positionals_after_options_land_where_the_text_says() -> None:
    exec_ = parsed("pyro workspace exec --timeout-seconds 5 WS -- ls -la")
    assert (exec_.workspace, exec_.timeout_seconds, exec_.cmd) == ("WS", 5, ["ls", "-la"])
    pull = parsed("pyro env pull --name tool:1 oci-archive:./tool.tar --json")
    assert (pull.reference, pull.name, pull.json) == ("oci-archive:./tool.tar", "tool:1", True)
    run = parsed("pyro run --json debian:12 -- sh -c 'exit 3'")
    assert (run.environment, run.cmd, run.json) == ("debian:12", ["sh", "-c", "exit 3"], True)
