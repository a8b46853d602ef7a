"""Memory merging: the host takes back the memory a running guest freed.

A warm-started guest zeroes every page it frees (its template booted with
``init_on_free=1``, see ``qemu.MachineSpec.zero_freed_memory``), and QEMU marks
guest RAM mergeable (``mem-merge``, on by default). With the kernel's
same-page merging (KSM) running and ``use_zero_pages`` set, the host folds
those zero pages back onto the kernel's zero page: an idle guest shrinks while
it runs, not only when it is suspended.

Why not virtio free page reporting for warm guests too: QEMU 7.2 discards a
reported page by punching a hole in the guest's RAM file, and a warm guest's
RAM file is the snapshot every guest of it maps. Cold-booted guests, whose RAM
is anonymous, do report their free pages (``MachineSpec.free_page_reporting``;
docs/host-requirements.md).

KSM is a host-wide setting. pyro turns it on only when it is off (``run`` is
0) and ``PYRO_MEMORY_MERGE`` is not ``off``; a host that set it up already is
left as it is. It merges identical guest pages across guests too, which is
what lets a page's sharing be timed from another guest (docs/security.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_mcp import config

log = logging.getLogger("pyro.merge")

KSM_DIR = Path("/sys/kernel/mm/ksm")
PAGE_SIZE = 4096

FIX = (
    "as root: echo 1 > /sys/kernel/mm/ksm/use_zero_pages; echo 1 > /sys/kernel/mm/ksm/run "
    "(pyro does this itself when it runs as root and PYRO_MEMORY_MERGE is not off)"
)


@dataclass(frozen=True)
class MergeStatus:
    """What the host's same-page merging does for running guests."""

    # on: freed memory of running warm guests goes back to the host;
    # off: KSM is present but not running; unavailable: this kernel has none.
    state: str
    zero_pages: bool
    # Memory the host holds no longer: zero pages folded, duplicates merged.
    folded_mib: float
    merged_mib: float
    note: str
    fix: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "zero_pages": self.zero_pages,
            "folded_mib": round(self.folded_mib, 1),
            "merged_mib": round(self.merged_mib, 1),
            "note": self.note,
            "fix": self.fix,
        }


def status(root: Path = KSM_DIR) -> MergeStatus:
    """Read the host's KSM state."""
    run = _read(root / "run")
    if run is None:
        return MergeStatus(
            "unavailable",
            False,
            0.0,
            0.0,
            "this kernel has no same-page merging (CONFIG_KSM): running warm guests keep "
            "the memory they freed until they are suspended",
            None,
        )
    zero_pages = _read(root / "use_zero_pages") == "1"
    folded = _pages_mib(root / "ksm_zero_pages")
    merged = _pages_mib(root / "pages_sharing")
    if run != "1":
        reason = "turned off by PYRO_MEMORY_MERGE" if not config.memory_merge_enabled() else ""
        return MergeStatus(
            "off",
            zero_pages,
            folded,
            merged,
            "same-page merging is off"
            + (f" ({reason})" if reason else "")
            + ": running warm guests keep the memory they freed until they are suspended",
            FIX,
        )
    note = "running warm guests give the memory they free back within a scan"
    if not zero_pages:
        note += " (use_zero_pages is off: zero pages are merged with each other instead)"
    return MergeStatus("on", zero_pages, folded, merged, note, None)


def ensure(root: Path = KSM_DIR) -> None:
    """Turn same-page merging on if it is off and pyro may (called before each launch)."""
    if not config.memory_merge_enabled() or _read(root / "run") != "0":
        return
    try:
        (root / "use_zero_pages").write_text("1")
        (root / "run").write_text("1")
    except OSError as exc:
        # Not root: guests run all the same; `pyro doctor` says how to turn it on.
        log.info("same-page merging stays off (%s); %s", exc, FIX)
        return
    log.info("turned on the host's same-page merging with use_zero_pages")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _pages_mib(path: Path) -> float:
    value = _read(path)
    try:
        return int(value or 0) * PAGE_SIZE / 2**20
    except ValueError:
        return 0.0
