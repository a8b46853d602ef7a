"""CLI flags of the contract, and a reader that goes away early."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli_helper import pyro_cli

pytestmark = pytest.mark.vm


def test_a_piped_command_cut_short_ends_quietly(cli_env: dict[str, str]) -> None:
    result = subprocess.run(
        f"{sys.executable} -m pyro_mcp.cli.main doctor | head -1",
        shell=True,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.startswith("Runtime: PASS")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_update_clear_name_and_run_ttl_and_demo_network(cli_env: dict[str, str]) -> None:
    ws = pyro_cli(cli_env, "workspace", "create", "--name", "named", "--id-only").stdout.strip()
    cleared = pyro_cli(cli_env, "workspace", "update", ws, "--clear-name", "--json")
    assert cleared.returncode == 0 and '"name": null' in cleared.stdout
    both = pyro_cli(cli_env, "workspace", "update", ws, "--clear-name", "--name", "x")
    assert both.returncode == 2
    assert pyro_cli(cli_env, "workspace", "delete", ws).returncode == 0
    short = pyro_cli(cli_env, "run", "debian:12", "--ttl-seconds", "5", "--", "true")
    assert short.returncode == 2 and "ttl_seconds" in short.stderr
    ran = pyro_cli(cli_env, "run", "debian:12", "--ttl-seconds", "300", "--", "true")
    assert ran.returncode == 0, ran.stderr
    demo = pyro_cli(cli_env, "demo", "--network")
    assert demo.returncode == 0, demo.stderr
    assert "default route via eth0" in demo.stdout


def test_doctor_platform_reports_the_host_alone(cli_env: dict[str, str]) -> None:
    import json

    result = pyro_cli(cli_env, "doctor", "--platform", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["accel"]["accel"] in ("kvm", "tcg")
    assert "environments" not in report and "daily_loop" not in report
    human = pyro_cli(cli_env, "doctor", "--platform")
    assert human.returncode == 0, human.stderr
    assert "qemu" in human.stdout and "daily loop" not in human.stdout
    assert report["memory_merge"]["state"] in ("on", "off", "unavailable")
    assert "same-page merging" in human.stdout


def test_the_4_5_lines_and_json_fields_of_doctor_prepare_env_list_help_and_demo(
    cli_env: dict[str, str],
) -> None:
    """../shared/seed-parity.md: doctor, prepare, env list, --help and demo as 4.5 shows them."""
    import json

    report = json.loads(pyro_cli(cli_env, "doctor", "--json").stdout)
    assert report["runtime_ok"] is True and set(report["kvm"]) == {"exists", "readable", "writable"}
    loop = report["daily_loop"]
    assert loop["installed"] is True and loop["network_prepared"] in (True, False)
    assert loop["manifest_path"] == loop["path"] and loop["cache_dir"] == cli_env["PYRO_CACHE_DIR"]
    assert report["project_source"]["tried"][0] == "--project-path: not given"
    human = pyro_cli(cli_env, "doctor").stdout.splitlines()
    assert human[0] == "Runtime: PASS" and human[1].startswith("KVM: exists=")
    assert human[2].startswith("Networking: ") and human[3].startswith("Daily loop: ")
    assert any(line.startswith("Project source: ") for line in human)

    prepared = json.loads(pyro_cli(cli_env, "prepare", "--json").stdout)
    # Ready after the call (4.5's `prepared`), and nothing had to be done (`reused`).
    assert prepared["reused"] is True and prepared["prepared"] is True
    lines = pyro_cli(cli_env, "prepare").stdout.splitlines()
    assert lines[:2] == ["Prepare: debian:12", "Daily loop: WARM"]
    assert lines[2].startswith("Result: prepared network_prepared=")
    assert lines[2].endswith(" reused=yes")

    assert pyro_cli(cli_env, "env", "list").stdout.startswith("Catalog version: ")
    helped = pyro_cli(cli_env, "--help").stdout
    steps = ["pyro doctor", "pyro env list", "pyro env pull", "pyro run", "pyro mcp serve"]
    assert all(step in helped.split("zero to hero:")[1] for step in steps)
    assert "claude mcp add pyro -- /" in helped and "codex mcp add pyro -- /" in helped

    demo = json.loads(pyro_cli(cli_env, "demo", "--json").stdout)
    assert demo["command"] == "git --version" and demo["exit_code"] == 0
    assert demo["stdout"].startswith("git version")
    assert demo["execution_mode"] == "guest_virtio_serial"
    assert demo["cleanup"] == {
        "deleted": True,
        "reason": "post_exec_cleanup",
        "vm_id": demo["vm_id"],
    }
