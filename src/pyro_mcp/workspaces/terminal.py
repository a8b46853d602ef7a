"""Rendering raw terminal output as plain text a model can read.

ANSI control sequences (colours, cursor movement) and OSC sequences (window
titles, hyperlinks) are removed; carriage returns and backspaces are applied
the way a terminal would show them; line endings become ``\\n``.
"""

from __future__ import annotations

import re

# CSI: ESC [ params intermediates final; OSC: ESC ] ... (BEL | ESC \\);
# other two-byte escapes (charset selection, keypad modes, ...).
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_OTHER_ESC = re.compile(r"\x1b[()][0-9A-Za-z]|\x1b[=>78cDEHMNOZ]")
_CONTROL = re.compile(r"[\x00-\x07\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")


def render_plain(raw: str) -> str:
    """``raw`` terminal output as a terminal would display it, without styling."""
    text = _OSC.sub("", raw)
    text = _CSI.sub("", text)
    text = _OTHER_ESC.sub("", text)
    text = text.replace("\r\n", "\n")
    lines = [_apply_line_controls(line) for line in text.split("\n")]
    return _CONTROL.sub("", "\n".join(lines))


def _apply_line_controls(line: str) -> str:
    """Apply ``\\r`` (back to column 0, overwrite) and ``\\b`` (one column left)."""
    if "\r" not in line and "\b" not in line:
        return line
    cells: list[str] = []
    column = 0
    for char in line:
        if char == "\r":
            column = 0
        elif char == "\b":
            column = max(0, column - 1)
        else:
            if column < len(cells):
                cells[column] = char
            else:
                cells.append(char)
            column += 1
    return "".join(cells)
