"""Secrets never leak: every redaction path against real guests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from pyro_mcp import InvalidArgument, Pyro
from pyro_mcp.workspaces.secrets import Redactor
from tests.cli_helper import pyro_cli
from tests.mcp.conftest import call, mcp_client

SECRET = "tok-SUPERSECRET-123"
MARK = "[REDACTED:API_TOKEN]"


def test_the_redactor_holds_back_only_what_could_begin_a_secret() -> None:
    redactor = Redactor({"A": b"secret-value", "B": b"other-secret"})
    assert redactor.redact_bytes(b"x secret-value y") == b"x [REDACTED:A] y"
    assert redactor.held_back(b"output then secr") == 4
    assert redactor.held_back(b"output then other-sec") == 9
    assert redactor.held_back(b"nothing to hold") == 0


def test_invalid_secret_names_and_values_are_refused(pyro: Pyro, state_dir: Path) -> None:
    for secrets, message in (
        ({"1BAD": "value-long"}, "not a valid name"),
        ({"BAD-NAME": "value-long"}, "not a valid name"),
        ({"SHORT": "abc"}, "4 bytes to 64 KiB"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            pyro.create_workspace(secrets=secrets)
    assert pyro.list_workspaces()["workspaces"] == []
    assert not (state_dir / "workspaces").exists() or not list((state_dir / "workspaces").iterdir())


@pytest.mark.vm
def test_secret_values_are_redacted_from_every_surface(
    pyro: Pyro, state_dir: Path, cli_env: dict[str, str]
) -> None:
    created = pyro.create_workspace(name="sec", secrets={"API_TOKEN": SECRET})
    ws = created["workspace_id"]
    assert created["secrets"] == ["API_TOKEN"]

    # exec output (both streams, renamed variable) and the journal
    result = pyro.exec_workspace(
        ws, "echo $API_TOKEN; echo $T >&2", secret_env=["API_TOKEN", "API_TOKEN:T"]
    )
    assert (result["stdout"], result["stderr"]) == (f"{MARK}\n", f"{MARK}\n")
    pyro.exec_workspace(ws, f"echo literal {SECRET} > leaked.txt")
    with pytest.raises(InvalidArgument, match="no secret 'NOPE'"):
        pyro.exec_workspace(ws, "true", secret_env=["NOPE"])
    assert SECRET not in str(pyro.logs_workspace(ws))
    summary = pyro.summarize_workspace(ws)
    assert SECRET not in str(summary)
    uses = [c for c in summary["host_crossings"] if c["kind"] == "secret_use"]
    assert uses[0] == {"kind": "secret_use", "names": ["API_TOKEN"], "by": "exec"}
    assert SECRET not in str(pyro.read_workspace_file(ws, "leaked.txt"))
    assert SECRET not in pyro.diff_workspace(ws)["patch"]

    # shell reads, with the value split across two reads
    sh = pyro.open_shell(ws, secret_env=["API_TOKEN"])["shell_id"]
    pyro.write_shell(ws, sh, "printf 'tok-SUPER'; sleep 2; printf 'SECRET-123\\n'")
    first = pyro.read_shell(ws, sh, wait_for_idle_ms=800)
    second = pyro.read_shell(
        ws, sh, cursor=first["next_cursor"], wait_for_idle_ms=3000, max_wait_ms=20000
    )
    combined = first["output"] + second["output"]
    assert SECRET not in combined and "SUPER" not in first["output"].splitlines()[-1]
    assert MARK in combined

    # service logs
    pyro.start_service(
        ws,
        "leaky",
        "echo $API_TOKEN; touch .ready; sleep 100",
        ready_file=".ready",
        secret_env=["API_TOKEN"],
    )
    assert pyro.logs_service(ws, "leaky")["stdout"] == f"{MARK}\n"

    # errors
    with pytest.raises(InvalidArgument) as caught:
        pyro.read_workspace_file(ws, f"{SECRET}.txt")
    assert SECRET not in str(caught.value) and MARK in str(caught.value)

    # MCP results
    async def through_mcp() -> None:
        async with mcp_client(cli_env, "--no-project-source") as client:
            out = await call(
                client,
                "workspace_exec",
                workspace_id=ws,
                command="echo $API_TOKEN",
                secret_env=["API_TOKEN"],
            )
            assert out["stdout"] == f"{MARK}\n"
            raw = await client.call_tool(
                "workspace_file_read", {"workspace_id": ws, "path": "leaked.txt"}
            )
            assert SECRET not in str(raw)

    anyio.run(through_mcp)

    # storage: 0600 files in a 0700 directory, nothing in SQLite, back after reset
    folder = state_dir / "workspaces" / ws / "secrets"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "API_TOKEN").stat().st_mode & 0o777 == 0o600
    database = sqlite3.connect(state_dir / "pyro.db")
    for table in ("workspaces", "journal", "vms", "tombstones"):
        assert SECRET not in str(database.execute(f"SELECT * FROM {table}").fetchall())
    database.close()
    pyro.reset_workspace(ws)
    again = pyro.exec_workspace(
        ws, "stat -c %a /run/pyro-secrets/API_TOKEN; cat /run/pyro-secrets/API_TOKEN"
    )
    assert again["stdout"] == f"600\n{MARK}"
    pyro.delete_workspace(ws)


@pytest.mark.vm
def test_secret_files_and_secret_env_through_the_cli(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("file-secret-value")
    ws = pyro_cli(
        cli_env, "workspace", "create", "--secret-file", f"TOKEN={tmp_path / 'token'}", "--id-only"
    ).stdout.strip()
    done = pyro_cli(
        cli_env,
        "workspace",
        "exec",
        ws,
        "--secret-env",
        "TOKEN:PASS",
        "--",
        "sh",
        "-c",
        'echo "$PASS"',
    )
    assert done.returncode == 0 and done.stdout == "[REDACTED:TOKEN]\n"
    bad = pyro_cli(cli_env, "workspace", "create", "--secret", "not-valid=xxxxxx")
    assert bad.returncode == 2 and "not a valid name" in bad.stderr
    assert pyro_cli(cli_env, "workspace", "delete", ws).returncode == 0
