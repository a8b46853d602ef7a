from pathlib import Path

import pytest

from pyro_mcp.errors import HostSetupError, InvalidArgument
from pyro_mcp.vm import accel


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYRO_ACCEL", raising=False)


def test_no_kvm_device_means_tcg(tmp_path: Path) -> None:
    decision = accel.static_decision(tmp_path / "kvm", tmp_path / "pvm")
    assert decision is not None
    assert (decision.accel, decision.kvm_present) == ("tcg", False)


def test_a_paravirtual_nested_hypervisor_means_tcg_without_probing(tmp_path: Path) -> None:
    (tmp_path / "kvm").touch()
    (tmp_path / "pvm").mkdir()
    decision = accel.static_decision(tmp_path / "kvm", tmp_path / "pvm")
    assert decision is not None and decision.accel == "tcg"
    assert "kvm_pvm" in decision.reason


def test_a_plain_kvm_device_needs_the_boot_probe(tmp_path: Path) -> None:
    (tmp_path / "kvm").touch()
    assert accel.static_decision(tmp_path / "kvm", tmp_path / "pvm") is None


def test_the_override_wins_and_is_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYRO_ACCEL", "tcg")
    (tmp_path / "kvm").touch()
    decision = accel.static_decision(tmp_path / "kvm", tmp_path / "pvm")
    assert decision is not None and decision.reason == "forced by PYRO_ACCEL=tcg"
    monkeypatch.setenv("PYRO_ACCEL", "xen")
    with pytest.raises(InvalidArgument):
        accel.static_decision(tmp_path / "kvm", tmp_path / "pvm")
    monkeypatch.setenv("PYRO_ACCEL", "kvm")
    with pytest.raises(HostSetupError):
        accel.static_decision(tmp_path / "missing", tmp_path / "pvm")


def test_the_boot_probe_runs_once_and_its_verdict_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "static_decision", lambda: None)
    calls = []

    def probe() -> str | None:
        calls.append(1)
        return "emulation failure"

    first = accel.decide(tmp_path / "probe.json", "k1", probe)
    second = accel.decide(tmp_path / "probe.json", "k1", probe)
    assert first.accel == second.accel == "tcg"
    assert "emulation failure" in first.reason
    assert len(calls) == 1
    accel.decide(tmp_path / "probe.json", "k2", lambda: None)
    assert accel.decide(tmp_path / "probe.json", "k2", probe).accel == "kvm"
