"""One-shot runs against real guests (TCG here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp import NotFound, Pyro, VMError
from pyro_mcp.store.db import Store
from pyro_mcp.vm.backend import wait_for_exit
from tests.cli_helper import pyro_cli

pytestmark = pytest.mark.vm


def test_run_in_vm_runs_git_in_a_fresh_guest(pyro: Pyro, state_dir: Path) -> None:
    result = pyro.run_in_vm(environment="debian:12", command="git --version")
    assert result["exit_code"] == 0
    assert result["stdout"].startswith("git version 2.")
    assert result["accel"] in ("tcg", "kvm")
    assert result["environment"] == "debian:12"
    assert pyro.list_vms() == []
    assert list((state_dir / "vms").iterdir()) == []


def test_cli_run_json_keeps_streams_apart_and_exits_with_the_guest_code(
    cli_env: dict[str, str],
) -> None:
    done = pyro_cli(
        cli_env, "run", "debian:12", "--json", "--", "sh", "-c", "echo out; echo err >&2; exit 3"
    )
    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    for field in (
        "environment",
        "exit_code",
        "stdout",
        "stderr",
        "timed_out",
        "truncated",
        "duration_ms",
        "accel",
    ):
        assert field in result
    assert (result["stdout"], result["stderr"], result["exit_code"]) == ("out\n", "err\n", 3)
    assert "[run] phase=create" in done.stderr and "[run] phase=execute" in done.stderr


def test_cli_run_passes_guest_output_through(cli_env: dict[str, str]) -> None:
    done = pyro_cli(
        cli_env, "run", "debian:12", "--", "sh", "-c", "echo to-stdout; echo to-stderr >&2"
    )
    assert done.returncode == 0
    assert done.stdout == "to-stdout\n"
    assert "to-stderr" in done.stderr


def test_a_command_past_its_timeout_is_killed_and_the_vm_cleaned_up(
    pyro: Pyro, state_dir: Path
) -> None:
    result = pyro.run_in_vm(command="echo started; sleep 600", timeout_seconds=2)
    assert result["timed_out"] is True
    assert result["exit_code"] == 124
    assert result["stdout"] == "started\n"
    assert list((state_dir / "vms").iterdir()) == []


def test_huge_output_is_bounded_on_the_host(pyro: Pyro) -> None:
    result = pyro.run_in_vm(command="head -c 100000000 /dev/zero | tr '\\0' x; echo tail >&2")
    assert result["truncated"] is True and result["stdout_truncated"] is True
    assert len(result["stdout"]) == 1024 * 1024
    assert result["stderr"] == "tail\n"


def test_a_guest_kernel_panic_mid_command_is_a_clear_error(pyro: Pyro, state_dir: Path) -> None:
    with pytest.raises(VMError) as caught:
        pyro.run_in_vm(command="echo c > /proc/sysrq-trigger; sleep 30")
    message = str(caught.value)
    assert "the VM died" in message
    assert "Kernel panic" in message
    assert list((state_dir / "vms").iterdir()) == []


def test_two_runs_at_once_are_isolated(pyro: Pyro) -> None:
    results: dict[str, Any] = {}

    def run(tag: str) -> None:
        results[tag] = pyro.run_in_vm(
            command=f"echo {tag} > /root/mark; sleep 1; cat /root/mark; hostname"
        )

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["first"]["stdout"].split()[0] == "first"
    assert results["second"]["stdout"].split()[0] == "second"
    assert results["first"]["vm_id"] != results["second"]["vm_id"]


def test_network_is_off_unless_asked_for(pyro: Pyro) -> None:
    offline = pyro.run_in_vm(command="ls /sys/class/net")
    assert offline["stdout"].split() == ["lo"]
    online = pyro.run_in_vm(
        command="ls /sys/class/net; cat /etc/resolv.conf; echo $https_proxy", network=True
    )
    # Out only through the egress proxy; DNS points at nothing, so lookups fail at once.
    assert "eth0" in online["stdout"] and "nameserver 127.0.0.1" in online["stdout"]
    assert "http://10.0.2.100:3128" in online["stdout"]


def test_a_killed_caller_leaves_no_vm_behind(
    state_dir: Path, cache_dir: Path, built_environment: object
) -> None:
    script = (
        "import sys; from pyro_mcp import Pyro;"
        f"p = Pyro(state_dir={str(state_dir)!r}, cache_dir={str(cache_dir)!r},"
        " progress=lambda m: (print(m, flush=True)));"
        "p.run_in_vm(command='sleep 600', timeout_seconds=900)"
    )
    caller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert caller.stdout is not None
    for line in caller.stdout:
        if line.startswith("phase=execute"):
            break
    (record,) = Store(state_dir / "pyro.db").list_vms()
    assert record.supervisor_pid is not None
    os.kill(caller.pid, signal.SIGKILL)
    caller.wait()
    caller.stdout.close()
    assert wait_for_exit(record.supervisor_pid, 30)
    assert not (state_dir / "vms" / record.vm_id).exists()
    # The next pyro call reaps the orphaned record.
    assert Pyro(state_dir=state_dir, cache_dir=cache_dir).list_vms() == []


def test_an_unknown_environment_lists_the_valid_names(cli_env: dict[str, str], pyro: Pyro) -> None:
    with pytest.raises(NotFound, match="debian:12-build"):
        pyro.run_in_vm(environment="alpine:3", command="true")
    done = pyro_cli(cli_env, "run", "alpine:3", "--", "true")
    assert done.returncode == 1
    assert "unknown environment 'alpine:3'" in done.stderr and "debian:12-base" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_qemu_is_one_clear_message(cli_env: dict[str, str]) -> None:
    env = dict(cli_env, PYRO_QEMU="/nonexistent/qemu-system-x86_64")
    done = pyro_cli(env, "run", "debian:12", "--", "true")
    assert done.returncode == 1
    assert "qemu-system-x86" in done.stderr and "apt-get install" in done.stderr
    assert "Traceback" not in done.stderr
    doctor = pyro_cli(env, "doctor", "--json")
    assert doctor.returncode == 1
    assert json.loads(doctor.stdout)["ok"] is False


def test_a_missing_command_is_a_usage_error(cli_env: dict[str, str]) -> None:
    done = pyro_cli(cli_env, "run", "debian:12")
    assert done.returncode == 2
    assert "give the command after --" in done.stderr


def test_doctor_reports_accel_qemu_tools_and_environments(cli_env: dict[str, str]) -> None:
    done = pyro_cli(cli_env, "doctor", "--json")
    assert done.returncode == 0, done.stdout
    report = json.loads(done.stdout)
    assert report["accel"]["accel"] in ("tcg", "kvm") and report["accel"]["reason"]
    assert report["qemu"]["version"]
    assert {t["command"] for t in report["host_tools"]} >= {"qemu-system-x86_64", "debootstrap"}
    assert any(e["name"] == "debian:12" and e["installed"] for e in report["environments"])
    human = pyro_cli(cli_env, "doctor")
    assert "accel" in human.stdout and "qemu" in human.stdout


def test_demo_proves_the_lifecycle_end_to_end(cli_env: dict[str, str]) -> None:
    done = pyro_cli(cli_env, "demo", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert [s["step"] for s in report["steps"]] == [
        "create",
        "start",
        "exec",
        "exec",
        "exec",  # the last exec deletes the VM (exec_vm's contract)
    ]
    assert report["cleanup"]["deleted"] is True
    assert report["outputs"]["git --version"].startswith("git version")
