import pytest

from pyro_mcp.errors import InvalidArgument
from pyro_mcp.workspaces.processes import parse_publish
from pyro_mcp.workspaces.terminal import render_plain


def test_colours_cursor_moves_and_titles_are_removed() -> None:
    raw = "\x1b]0;title\x07\x1b[1;32mgreen\x1b[0m \x1b[2Kdone\x1b(B"
    assert render_plain(raw) == "green done"


def test_carriage_returns_and_backspaces_apply_like_a_terminal() -> None:
    assert render_plain("progress 10%\rprogress 100%\r\n") == "progress 100%\n"
    assert render_plain("abc\b\bX\n") == "aXc\n"
    assert render_plain("line\r\nnext") == "line\nnext"


def test_bells_and_other_controls_are_dropped() -> None:
    assert render_plain("ding\x07\x00 dong") == "ding dong"


def test_publish_specs() -> None:
    assert parse_publish("8000") == (None, 8000)
    assert parse_publish("18000:8000") == (18000, 8000)
    for bad in ("http", "0", "70000", "a:80"):
        with pytest.raises(InvalidArgument):
            parse_publish(bad)
