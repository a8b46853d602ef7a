"""A diff looks only where the guest's change record says something happened,
and gives exactly what a walk of both trees gives.

Each case changes a seeded workspace in a way a record could miss (a file
modified deep down, a directory renamed, a directory deleted and made again
under the same name, a mode change, a file turned into a directory, a hard
link), then checks the diff against the full walk the guest falls back to
after a cold boot, when its record cannot be trusted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_mcp import Pyro
from pyro_mcp.agent import operations as guest

CHANGES = """
set -e
echo more >> deep/a/b/c/leaf.txt
mv moved moved-to
rm -rf again && mkdir again && echo new > again/fresh.txt
chmod 700 deep/a
rm kind && mkdir kind && echo inside > kind/file.txt
touch -d '2001-01-01' same/untouched.txt
echo same-size > same/other.txt
"""
EXPECTED = {
    "deep/a/b/c/leaf.txt": "modified",
    "deep/a": "mode_changed",
    "moved": "deleted",
    "moved/one.txt": "deleted",
    "moved-to": "added",
    "moved-to/one.txt": "added",
    "again/old.txt": "deleted",
    "again/fresh.txt": "added",
    "kind": "type_changed",
    "kind/file.txt": "added",
    "same/other.txt": "modified",
}


def make_seed(root: Path) -> Path:
    seed = root / "seed"
    for path, text in {
        "deep/a/b/c/leaf.txt": "leaf\n",
        "moved/one.txt": "one\n",
        "again/old.txt": "old\n",
        "kind": "a file\n",
        "same/untouched.txt": "untouched\n",
        "same/other.txt": "other-one\n",
        "wide/unrelated.txt": "unrelated\n",
    }.items():
        (seed / path).parent.mkdir(parents=True, exist_ok=True)
        (seed / path).write_text(text)
    return seed


def statuses(diff: dict[str, Any]) -> dict[str, str]:
    return {c["path"]: c["status"] for c in diff["changes"]}


def guest_diff(pyro: Pyro, ws: str) -> dict[str, Any]:
    """The guest's own diff reply; ``walked``: it walked both trees (its
    record was not trusted), which makes the record whole again."""
    workspaces = pyro._workspaces
    with workspaces.ctx.connect(workspaces.ctx.find(ws)) as client:
        return dict(guest.diff(client, {"patch": False, "explain": True}))


def walked(pyro: Pyro, ws: str) -> bool:
    return bool(guest_diff(pyro, ws)["walked"])


def test_the_record_finds_what_a_full_walk_finds(pyro: Pyro, tmp_path: Path) -> None:
    ws = pyro.create_workspace(seed_path=make_seed(tmp_path))["workspace_id"]
    assert walked(pyro, ws) is False  # a fresh disk: the record is whole from the start
    assert statuses(pyro.diff_workspace(ws)) == {}

    assert pyro.exec_workspace(ws, CHANGES)["exit_code"] == 0
    recorded = pyro.diff_workspace(ws, format="patch")
    assert statuses(recorded) == EXPECTED
    assert walked(pyro, ws) is False

    # A cold boot of the changed disk: the first diff walks, and agrees.
    pyro.stop_workspace(ws, discard_memory=True)
    pyro.start_workspace(ws)
    full = guest_diff(pyro, ws)
    assert full["walked"] is True and statuses(full) == EXPECTED
    assert pyro.diff_workspace(ws, format="patch") == recorded
    assert walked(pyro, ws) is False  # that walk made the record whole again

    # More changes after the walk, on top of the ones it found.
    more = "echo again >> deep/a/b/c/leaf.txt && rm moved-to/one.txt && echo w > wide/new.txt"
    assert pyro.exec_workspace(ws, more)["exit_code"] == 0
    assert statuses(pyro.diff_workspace(ws)) == {
        **{p: s for p, s in EXPECTED.items() if p != "moved-to/one.txt"},
        "wide/new.txt": "added",
    }

    # Undoing a change takes it out of the diff.
    assert pyro.exec_workspace(ws, "rm -r moved-to wide/new.txt")["exit_code"] == 0
    assert "moved-to" not in statuses(pyro.diff_workspace(ws))

    # Reset: a fresh disk again, nothing changed, and the record whole.
    pyro.reset_workspace(ws)
    assert walked(pyro, ws) is False
    assert statuses(pyro.diff_workspace(ws)) == {}


def test_new_trees_renames_and_undone_edits_are_seen_as_a_walk_sees_them(
    pyro: Pyro, tmp_path: Path
) -> None:
    ws = pyro.create_workspace(seed_path=make_seed(tmp_path))["workspace_id"]
    work = (
        "mkdir -p new/a/b && echo deep > new/a/b/leaf.txt && "
        "mv same/other.txt same/renamed.txt && "
        "echo untouched-again > same/untouched.txt.tmp && mv same/untouched.txt.tmp x && "
        "rm x && echo unrelated > wide/unrelated.txt && chmod 600 deep/a/b/c/leaf.txt"
    )
    assert pyro.exec_workspace(ws, work)["exit_code"] == 0
    expected = {
        "new": "added",
        "new/a": "added",
        "new/a/b": "added",
        "new/a/b/leaf.txt": "added",
        "same/other.txt": "deleted",
        "same/renamed.txt": "added",
        "deep/a/b/c/leaf.txt": "mode_changed",
    }
    recorded = guest_diff(pyro, ws)
    assert recorded["walked"] is False and statuses(recorded) == expected
    # A file added inside a tree that was itself new at the last diff.
    assert pyro.exec_workspace(ws, "echo more > new/a/more.txt")["exit_code"] == 0
    assert statuses(guest_diff(pyro, ws)) == {**expected, "new/a/more.txt": "added"}
    # The same, after a cold boot makes the guest walk.
    pyro.stop_workspace(ws, discard_memory=True)
    pyro.start_workspace(ws)
    walked_once = guest_diff(pyro, ws)
    assert walked_once["walked"] is True
    assert statuses(walked_once) == {**expected, "new/a/more.txt": "added"}


def test_a_hard_link_falls_back_to_the_full_walk(pyro: Pyro, tmp_path: Path) -> None:
    ws = pyro.create_workspace(seed_path=make_seed(tmp_path))["workspace_id"]
    link = "ln wide/unrelated.txt deep/linked.txt && echo x >> deep/linked.txt"
    assert pyro.exec_workspace(ws, link)["exit_code"] == 0
    # Written through one name, changed under both; a record of directories
    # sees only deep/, so the guest walks everything instead.
    assert statuses(pyro.diff_workspace(ws)) == {
        "deep/linked.txt": "added",
        "wide/unrelated.txt": "modified",
    }
