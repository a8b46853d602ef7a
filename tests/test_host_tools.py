import ast
from pathlib import Path

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


SRC = Path(host_tools.__file__).parent
SPAWNERS = {
    "subprocess": {"run", "Popen", "call", "check_call", "check_output", "getoutput"},
    "os": {"system", "popen", "posix_spawn", "posix_spawnp", "execv", "execvp", "execve"},
    "asyncio": {"create_subprocess_exec", "create_subprocess_shell"},
}


def _spawn_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.attr in SPAWNERS.get(node.func.value.id, ())
        ):
            found.append(
                f"{path.relative_to(SRC)}:{node.lineno} {node.func.value.id}.{node.func.attr}"
            )
    return found


def test_every_host_program_is_started_through_host_tools() -> None:
    """So each is found in sbin too and a missing one names its package.

    The guest programs run inside the VM and are exempt, and so is
    ``egress/confined.py``: it becomes the program it was given, whose path
    ``host_tools`` resolved in the process that started it.
    """
    offenders = [
        call
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "host_tools.py"
        and "guest" not in path.relative_to(SRC).parts
        and path.relative_to(SRC).as_posix() != "egress/confined.py"
        for call in _spawn_calls(path)
    ]
    assert offenders == []
    assert _spawn_calls(SRC / "host_tools.py")  # the check itself sees calls


def test_sbin_programs_are_found_without_sbin_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    for tool in (host_tools.CHROOT, host_tools.MKFS_EXT4, host_tools.DEBUGFS):
        assert host_tools.find(tool) is not None, tool.command
    done = host_tools.run(host_tools.CHROOT, ["--version"], capture_output=True)
    assert done.returncode == 0 and "chroot" in done.stdout


def test_running_a_missing_program_is_a_host_setup_error() -> None:
    missing = host_tools.HostTool("pyro-no-such-tool", "pyro-fake-package", "testing")
    with pytest.raises(HostSetupError, match="pyro-fake-package"):
        host_tools.run(missing, ["x"])
    with pytest.raises(HostSetupError, match="cannot run /nonexistent/program"):
        host_tools.run(Path("/nonexistent/program"))
    with pytest.raises(ValueError, match="absolute path"):
        host_tools.run(Path("relative-program"))
