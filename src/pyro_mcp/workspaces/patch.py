"""Unified diffs: parsing (as ``git diff`` and ``diff -u`` write them) and applying.

Applying is pure: it takes the current text of each file and returns the new
text, or raises ``PatchConflict`` naming the file and hunk with the expected
and actual lines. The workspace service reads every file first and writes
only when every hunk of every file applies (all or nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pyro_mcp.errors import InvalidArgument, PatchConflict

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
NO_NEWLINE = "\\ No newline at end of file"
# How far from the stated line a hunk may have moved (no fuzz: context must match).
MAX_OFFSET = 200


@dataclass
class Hunk:
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    # (marker, text) with marker in " -+"; text keeps its newline unless the
    # patch said "\ No newline at end of file" after it.
    lines: list[tuple[str, str]] = field(default_factory=list)

    @property
    def old_lines(self) -> list[str]:
        return [text for marker, text in self.lines if marker in " -"]

    @property
    def new_lines(self) -> list[str]:
        return [text for marker, text in self.lines if marker in " +"]


@dataclass
class FilePatch:
    old_path: str | None  # None for a new file
    new_path: str | None  # None for a deleted file
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or ""


def parse_patch(text: str) -> list[FilePatch]:
    """Every file section of a unified diff.

    Raises:
        InvalidArgument: the text is not a unified diff, or uses something this
            applier does not support (binary patches, renames without content).
    """
    lines = text.splitlines(keepends=True)
    patches: list[FilePatch] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("Binary files ") or line.startswith("GIT binary patch"):
            raise InvalidArgument(
                "patch", "binary patches are not supported; write the file instead"
            )
        if (
            line.startswith("--- ")
            and index + 1 < len(lines)
            and lines[index + 1].startswith("+++ ")
        ):
            old = _path(line[4:])
            new = _path(lines[index + 1][4:])
            current = FilePatch(old, new)
            patches.append(current)
            index += 2
            while index < len(lines) and lines[index].startswith("@@"):
                hunk, index = _parse_hunk(lines, index, current.path)
                current.hunks.append(hunk)
            continue
        index += 1
    if not patches:
        raise InvalidArgument(
            "patch", "no file changes found; expected a unified diff (--- / +++ / @@)"
        )
    for patch in patches:
        if not patch.hunks:
            raise InvalidArgument(
                "patch", f"{patch.path}: a file section without hunks is not supported"
            )
    return patches


def _path(header: str) -> str | None:
    name = header.rstrip("\n").split("\t")[0].strip()
    if name == "/dev/null":
        return None
    if name.startswith('"') and name.endswith('"'):
        name = name[1:-1]
    # Strip one leading component (a/, b/, or the directory `diff -ruN` names).
    return name.split("/", 1)[1] if "/" in name else name


def _parse_hunk(lines: list[str], index: int, path: str) -> tuple[Hunk, int]:
    match = _HUNK.match(lines[index])
    if not match:
        raise InvalidArgument("patch", f"{path}: malformed hunk header {lines[index].strip()!r}")
    old_start, old_count, new_start, new_count = (
        int(match.group(1)),
        int(match.group(2) or 1),
        int(match.group(3)),
        int(match.group(4) or 1),
    )
    hunk = Hunk(old_start, old_count, new_start, new_count)
    index += 1
    seen_old = seen_new = 0
    while index < len(lines) and (seen_old < old_count or seen_new < new_count):
        line = lines[index]
        marker = line[:1]
        if line.rstrip("\n") == NO_NEWLINE:
            _strip_last_newline(hunk)
            index += 1
            continue
        if marker == "\n" or line == "":  # an empty context line whose space was stripped
            marker, line = " ", " \n"
        if marker not in " -+":
            raise InvalidArgument("patch", f"{path}: unexpected line in hunk: {line.rstrip()!r}")
        hunk.lines.append((marker, line[1:]))
        seen_old += marker in " -"
        seen_new += marker in " +"
        index += 1
    if index < len(lines) and lines[index].rstrip("\n") == NO_NEWLINE:
        _strip_last_newline(hunk)
        index += 1
    if seen_old != old_count or seen_new != new_count:
        raise InvalidArgument("patch", f"{path}: hunk at line {old_start} is truncated")
    return hunk, index


def _strip_last_newline(hunk: Hunk) -> None:
    if hunk.lines:
        marker, text = hunk.lines[-1]
        hunk.lines[-1] = (marker, text.removesuffix("\n"))


def apply_file_patch(patch: FilePatch, original: str | None) -> str | None:
    """The new content of one file (None when the patch deletes it).

    Args:
        patch: one file section.
        original: the file's current text, or None when it does not exist.

    Raises:
        PatchConflict: a hunk does not match; the message shows expected vs actual.
    """
    if patch.old_path is None and original is not None:
        raise PatchConflict(f"{patch.path}: the patch creates this file but it already exists")
    if patch.old_path is not None and original is None:
        raise PatchConflict(f"{patch.path}: the patch changes this file but it does not exist")
    lines = (original or "").splitlines(keepends=True)
    offset = 0
    for number, hunk in enumerate(patch.hunks, start=1):
        expected = hunk.old_lines
        stated = max(hunk.old_start - 1, 0) + offset if hunk.old_count else hunk.old_start + offset
        position = _locate(lines, expected, stated)
        if position is None:
            actual = lines[stated : stated + len(expected)]
            raise PatchConflict(
                f"{patch.path}: hunk {number} (@@ -{hunk.old_start},{hunk.old_count} @@) does not "
                f"apply.\nexpected:\n{_show(expected)}\n"
                f"actual (line {stated + 1}):\n{_show(actual)}"
            )
        lines[position : position + len(expected)] = hunk.new_lines
        offset += position - stated + len(hunk.new_lines) - len(expected)
    if patch.new_path is None:
        if lines:
            raise PatchConflict(f"{patch.path}: the patch deletes this file but content remains")
        return None
    return "".join(lines)


def _locate(lines: list[str], expected: list[str], stated: int) -> int | None:
    for distance in range(MAX_OFFSET + 1):
        for candidate in (stated - distance, stated + distance) if distance else (stated,):
            if 0 <= candidate <= len(lines) - len(expected) and (
                lines[candidate : candidate + len(expected)] == expected
            ):
                return candidate
    return None


def _show(lines: list[str]) -> str:
    if not lines:
        return "  (nothing: end of file)"
    shown = [
        f"  |{line.rstrip(chr(10))}" + ("" if line.endswith("\n") else "  (no newline)")
        for line in lines[:20]
    ]
    return "\n".join(shown)
