"""Choosing between KVM and TCG.

``/dev/kvm`` opening proves nothing on the project's machines: it is a
paravirtual nested hypervisor (``kvm_pvm``) that cannot run an unmodified
Debian kernel. KVM is chosen only when a real guest boots under it within a
short bound (the boot probe, run once per kernel and QEMU version and cached);
everything else falls back to TCG. ``PYRO_ACCEL`` overrides the choice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyro_mcp import config
from pyro_mcp.errors import HostSetupError, InvalidArgument

KVM_DEVICE = Path("/dev/kvm")
KVM_PVM_MODULE = Path("/sys/module/kvm_pvm")


@dataclass(frozen=True)
class AccelDecision:
    """Which accelerator guests use on this host, and why."""

    accel: str
    reason: str
    kvm_present: bool
    kvm_usable: bool | None  # None: not yet probed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def static_decision(
    kvm_device: Path = KVM_DEVICE, pvm_module: Path = KVM_PVM_MODULE
) -> AccelDecision | None:
    """The decision when it needs no boot probe, or None when only a probe can tell."""
    override = config.accel_override()
    present = kvm_device.exists()
    if override is not None:
        if override not in ("kvm", "tcg"):
            raise InvalidArgument("PYRO_ACCEL", f"must be kvm or tcg, not {override!r}")
        if override == "kvm" and not present:
            raise HostSetupError("PYRO_ACCEL=kvm but this host has no /dev/kvm; unset PYRO_ACCEL")
        return AccelDecision(override, f"forced by PYRO_ACCEL={override}", present, None)
    if not present:
        return AccelDecision("tcg", "no /dev/kvm on this host", False, False)
    if not os.access(kvm_device, os.R_OK | os.W_OK):
        return AccelDecision(
            "tcg",
            "/dev/kvm exists but is not writable by this user (add yourself to the kvm group)",
            True,
            False,
        )
    if pvm_module.exists():
        return AccelDecision(
            "tcg",
            "/dev/kvm is a paravirtual nested hypervisor (kvm_pvm) that cannot run an "
            "unmodified guest kernel",
            True,
            False,
        )
    return None


def decide(probe_file: Path, probe_key: str, probe: Callable[[], str | None]) -> AccelDecision:
    """The accelerator to use, running (and caching) the KVM boot probe when needed.

    Args:
        probe_file: where the probe's verdict is cached.
        probe_key: changes when the verdict may change (kernel and QEMU versions).
        probe: boots a guest under KVM; returns None on success or the failure reason.
    """
    decision = static_decision()
    if decision is not None:
        return decision
    cached = cached_probe(probe_file, probe_key)
    if cached is None:
        failure = probe()
        cached = {"key": probe_key, "usable": failure is None, "reason": failure or ""}
        probe_file.parent.mkdir(parents=True, exist_ok=True)
        probe_file.write_text(json.dumps(cached))
    if cached["usable"]:
        return AccelDecision("kvm", "a guest booted under KVM (boot probe)", True, True)
    return AccelDecision("tcg", f"KVM boot probe failed: {cached['reason']}", True, False)


def cached_probe(probe_file: Path, probe_key: str) -> dict[str, Any] | None:
    try:
        cached = json.loads(probe_file.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(cached, dict) and cached.get("key") == probe_key:
        return cached
    return None
