import pytest

from pyro_mcp import host_tools
from pyro_mcp.errors import HostSetupError


def test_a_missing_tool_names_the_package_to_install() -> None:
    missing = host_tools.HostTool("pyro-no-such-tool", "pyro-fake-package", "testing")
    with pytest.raises(HostSetupError) as caught:
        host_tools.require(missing)
    assert "apt-get install --no-install-recommends pyro-fake-package" in str(caught.value)


def test_pyro_qemu_pointing_nowhere_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_QEMU", "/nonexistent/qemu")
    assert host_tools.find(host_tools.QEMU) is None
    with pytest.raises(HostSetupError, match="qemu-system-x86"):
        host_tools.require(host_tools.QEMU)
