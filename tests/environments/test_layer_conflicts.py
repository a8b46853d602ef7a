"""Which entries of a layer replace something of another type below: worked out
on the host from the layers' listings, so the guest checks only those."""

from __future__ import annotations

from collections.abc import Sequence

from pyro_mcp.environments.images import Layer, settle_conflicts


def layer(
    entries: list[tuple[str, bool]], remove: Sequence[str] = (), opaque: Sequence[str] = ()
) -> Layer:
    return Layer(
        digest="sha256:" + "0" * 64,
        size=0,
        compression="none",
        entries=list(entries),
        remove=list(remove),
        opaque=list(opaque),
    )


def test_only_type_changes_are_conflicts_after_whiteouts_and_opaque_folders() -> None:
    first = layer(
        [
            ("etc", True),
            ("etc/app", False),
            ("var", True),
            ("var/log", True),
            ("var/log/x", False),
            ("opt", True),
            ("opt/tool", True),
            ("lib", False),
        ]
    )
    second = layer(
        [
            ("etc", True),  # a directory again: nothing to remove
            ("etc/app", True),  # a file below, a directory now
            ("var/log", False),  # a directory below (with a child), a file now
            ("opt/tool", False),  # its folder was made opaque: nothing below any more
            ("lib", False),  # a file again
            ("new", False),
        ],
        opaque=["opt"],
    )
    third = layer(
        [("var/log", True), ("lib", True), ("gone", False)],
        remove=["lib"],  # whited out first: the directory replaces nothing
    )
    settle_conflicts([first, second, third])
    assert first.conflicts == []
    assert second.conflicts == [("etc/app", True), ("var/log", False)]
    assert third.conflicts == [("var/log", True)]


def test_without_a_settled_walk_the_guest_checks_every_entry() -> None:
    assert layer([("a", False)]).conflicts is None
