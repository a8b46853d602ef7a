"""Patches as `git diff` and `diff -u` really write them, applied in memory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pyro_mcp.errors import InvalidArgument, PatchConflict
from pyro_mcp.workspaces.patch import apply_file_patch, parse_patch


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def git_diff(tmp_path: Path, old: dict[str, str], new: dict[str, str]) -> str:
    a, b = tree(tmp_path / "a", old), tree(tmp_path / "b", new)
    result = subprocess.run(
        [
            "git",
            "diff",
            "--no-index",
            "--no-prefix",
            "a",
            "b",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert a and b
    return result.stdout


def apply_all(patch: str, files: dict[str, str]) -> dict[str, str]:
    out = dict(files)
    for file_patch in parse_patch(patch):
        result = apply_file_patch(file_patch, files.get(file_patch.path))
        if result is None:
            del out[file_patch.path]
        else:
            out[file_patch.path] = result
    return out


OLD = {
    "src/app.py": "".join(f"line {n}\n" for n in range(1, 40)),
    "gone.txt": "bye\n",
    "tail.txt": "no newline at end",
}
NEW = {
    "src/app.py": "".join(
        f"line {n}\n" if n not in (3, 30) else f"changed {n}\n" for n in range(1, 40)
    ),
    "added/new.txt": "hello\n",
    "tail.txt": "no newline at end, still",
}


def test_git_diff_with_add_modify_delete_hunks_and_eof_markers_round_trips(tmp_path: Path) -> None:
    patch = git_diff(tmp_path, OLD, NEW)
    assert "\\ No newline at end of file" in patch and "deleted file mode" in patch
    assert apply_all(patch, OLD) == NEW


def test_diff_u_output_applies(tmp_path: Path) -> None:
    a, b = tree(tmp_path / "old", OLD), tree(tmp_path / "new", NEW)
    patch = subprocess.run(
        ["diff", "-ruN", "old", "new"], cwd=tmp_path, capture_output=True, text=True, check=False
    ).stdout
    assert a and b and patch.startswith("diff -ruN")
    # diff -N writes added/deleted files against empty files, not /dev/null.
    result = apply_all(patch, {**OLD, "added/new.txt": ""})
    assert result == {**NEW, "gone.txt": ""}


def test_a_hunk_that_moved_still_applies() -> None:
    patch = "--- a/f\n+++ b/f\n@@ -2,2 +2,2 @@\n b\n-c\n+C\n"
    (file_patch,) = parse_patch(patch)
    assert apply_file_patch(file_patch, "new\nfirst\na\nb\nc\n") == "new\nfirst\na\nb\nC\n"


def test_a_mismatch_names_the_file_and_hunk_with_expected_and_actual_lines() -> None:
    (file_patch,) = parse_patch("--- a/src/x.py\n+++ b/src/x.py\n@@ -1,2 +1,2 @@\n a\n-b\n+B\n")
    with pytest.raises(PatchConflict) as caught:
        apply_file_patch(file_patch, "a\nzzz\n")
    message = str(caught.value)
    assert "src/x.py: hunk 1" in message
    assert "expected:\n  |a\n  |b" in message and "  |zzz" in message


def test_creating_a_file_that_exists_or_changing_a_missing_one_is_a_conflict() -> None:
    (create,) = parse_patch("--- /dev/null\n+++ b/n.txt\n@@ -0,0 +1 @@\n+x\n")
    with pytest.raises(PatchConflict, match="already exists"):
        apply_file_patch(create, "old\n")
    (change,) = parse_patch("--- a/m.txt\n+++ b/m.txt\n@@ -1 +1 @@\n-a\n+b\n")
    with pytest.raises(PatchConflict, match="does not exist"):
        apply_file_patch(change, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just some text\n", "no file changes found"),
        ("--- a/f\n+++ b/f\n", "without hunks"),
        ("--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n", "truncated"),
        ("--- a/f\n+++ b/f\n@@ broken @@\n", "malformed hunk header"),
        ("diff --git a/i.png b/i.png\nBinary files a/i.png and b/i.png differ\n", "binary patches"),
    ],
)
def test_malformed_patches_are_invalid_arguments(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_patch(text)
