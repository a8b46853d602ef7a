"""Egress by host name and secrets bound to hosts, on real guests.

The test servers listen on the host's 127.0.0.1 and the guest reaches them as
host.pyro.internal:PORT (the operator's allow_host_services). TLS servers use
a test CA: the supervisor's proxy trusts it through SSL_CERT_FILE, and the
guest through the host CA bundle pyro installs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp import Pyro
from pyro_mcp.errors import InvalidArgument
from tests.cli_helper import pyro_cli
from tests.egress.servers import LocalCA, serve

PROBE = Path(__file__).parent.parent / "egress" / "guest_probe.py"
REAL = "real-token-3f9a1c77e2"


@pytest.fixture
def servers(test_ca: LocalCA) -> Iterator[dict[str, Any]]:
    with serve(test_ca) as (allowed, seen), serve(test_ca) as (other, other_seen):
        yield {"allowed": allowed, "seen": seen, "other": other, "other_seen": other_seen}


def probe(pyro: Pyro, ws: str, *args: str) -> dict[str, Any]:
    pyro.write_workspace_file(ws, "/workspace/.probe.py", PROBE.read_text())
    quoted = " ".join(json.dumps(a) for a in args)
    result = pyro.exec_workspace(ws, f"python3 /workspace/.probe.py {quoted}", timeout_seconds=90)
    assert result["exit_code"] == 0, result
    answer: dict[str, Any] = json.loads(result["stdout"].strip().splitlines()[-1])
    return answer


def egress_entries(pyro: Pyro, ws: str) -> list[dict[str, Any]]:
    return [e for e in pyro.logs_workspace(ws)["entries"] if e["kind"] == "egress"]


def test_allow_list_secrets_and_what_stays_out(
    pyro: Pyro, servers: dict[str, Any], test_ca: LocalCA
) -> None:
    allowed, other = servers["allowed"], servers["other"]
    target = f"host.pyro.internal:{allowed}"
    created = pyro.create_workspace(
        network_policy="egress",
        allow_hosts=[target],
        allow_host_services=True,
        secrets={"TOKEN": {"value": REAL, "hosts": [target]}, "PLAIN": "plain-value-1"},
    )
    ws = created["workspace_id"]
    assert created["boot_kind"] == "warm"
    placeholder = created["egress"]["secrets"]["TOKEN"]["placeholder"]
    assert created["egress"]["allow_hosts"] == [target] and REAL not in json.dumps(created)

    # The allowed host answers over HTTPS; the proxy swapped the placeholder for
    # the real value in the header and the URL, and hid it again in the answer.
    answer = probe(
        pyro,
        ws,
        "get",
        f"https://{target}/api?key={placeholder}",
        "Authorization=@/run/pyro-secrets/TOKEN",
    )
    assert answer["status"] == 200, answer
    sent = servers["seen"].requests[-1]
    assert sent["headers"]["authorization"] == REAL
    assert sent["path"] == f"/api?key={REAL}"
    assert REAL not in answer["body"] and placeholder in answer["body"]

    # Another host: refused by the proxy with the policy and the fix.
    refused = probe(pyro, ws, "get", f"https://host.pyro.internal:{other}/")
    assert "error" in refused or refused["status"] == 403
    plain = probe(pyro, ws, "get", f"http://host.pyro.internal:{other}/")
    assert plain["status"] == 403 and "allow list" in plain["body"]
    assert "--allow-host" in plain["body"]
    assert servers["other_seen"].requests == []

    # No way around the proxy: direct connections, raw TCP, DNS all fail fast.
    direct = probe(pyro, ws, "direct", f"http://10.0.2.2:{allowed}/")
    assert "error" in direct and direct["seconds"] < 5
    raw = probe(pyro, ws, "tcp", "1.1.1.1", "443")
    assert "refused" in raw["error"].lower() and raw["seconds"] < 5
    dns = probe(pyro, ws, "dns", "example.com")
    assert "error" in dns and dns["seconds"] < 5

    # A permitted name cannot carry TLS for another.
    fronted = probe(pyro, ws, "sni", "host.pyro.internal", str(allowed), "evil.example")
    assert "error" in fronted, fronted

    # The guest only ever holds the placeholder: files, environment, memory.
    seen = pyro.exec_workspace(ws, "cat /run/pyro-secrets/TOKEN; echo; env", secret_env=["TOKEN"])[
        "stdout"
    ]
    assert placeholder in seen and "[REDACTED:TOKEN]" not in seen
    assert "plain-value-1" not in seen  # unbound secrets stay as they were (not in env here)

    # Every crossing is in the journal and the summary.
    entries = egress_entries(pyro, ws)
    good = [e for e in entries if e["allowed"] and e["port"] == allowed]
    assert good and good[0]["secrets"] == ["TOKEN"] and good[0]["tls"] == "terminated"
    denied = [e for e in entries if not e["allowed"]]
    assert any(e["port"] == other and "allow list" in e["reason"] for e in denied)
    assert any("front" in e["reason"] for e in denied)
    crossings = pyro.summarize_workspace(ws)["host_crossings"]
    assert any(c["kind"] == "egress" and not c["allowed"] for c in crossings)

    # A fork resumes the same memory: same placeholder, same CA, its own proxy.
    fork = pyro.fork_workspace(ws)["forks"][0]
    assert fork["egress"] == created["egress"]
    forked = probe(
        pyro,
        fork["workspace_id"],
        "get",
        f"https://{target}/fork",
        "Authorization=@/run/pyro-secrets/TOKEN",
    )
    assert forked["status"] == 200
    assert servers["seen"].requests[-1]["headers"]["authorization"] == REAL
    assert any(e["port"] == allowed for e in egress_entries(pyro, fork["workspace_id"]))
    pyro.delete_workspace(fork["workspace_id"])

    # Suspended memory holds the placeholder and never the real value.
    stopped = pyro.stop_workspace(ws)
    assert stopped["suspended"]
    vm_dir = pyro._workspaces.vms.paths.vms_dir / created["vm_id"]
    memory = (vm_dir / "suspended.state").read_bytes()
    assert placeholder.encode() in memory and REAL.encode() not in memory
    pyro.start_workspace(ws)
    again = probe(
        pyro, ws, "get", f"https://{target}/again", "Authorization=@/run/pyro-secrets/TOKEN"
    )
    assert again["status"] == 200
    assert servers["seen"].requests[-1]["headers"]["authorization"] == REAL
    pyro.reset_workspace(ws)  # a fresh root disk: the placeholder is put back, not the value
    assert pyro.exec_workspace(ws, "cat /run/pyro-secrets/TOKEN")["stdout"] == placeholder
    pyro.delete_workspace(ws)


def test_rules_change_live_and_survive_the_lifecycle(pyro: Pyro, servers: dict[str, Any]) -> None:
    first, second = servers["allowed"], servers["other"]
    ws = pyro.create_workspace(
        network_policy="egress",
        allow_hosts=[f"host.pyro.internal:{first}"],
        allow_host_services=True,
    )["workspace_id"]
    url_first = f"https://host.pyro.internal:{first}/"
    url_second = f"https://host.pyro.internal:{second}/"
    assert probe(pyro, ws, "get", url_first)["status"] == 200  # a plain tunnel (no secrets)
    assert "error" in probe(pyro, ws, "get", url_second)
    fronted = probe(pyro, ws, "sni", "host.pyro.internal", str(first), "evil.example")
    assert "error" in fronted, fronted
    assert any("front" in e["reason"] for e in egress_entries(pyro, ws))

    changed = pyro.update_workspace(
        ws, allow_hosts=[f"host.pyro.internal:{second}"], deny_hosts=[f"host.pyro.internal:{first}"]
    )
    assert changed["egress"]["allow_hosts"] == [f"host.pyro.internal:{second}"]
    assert changed["egress"]["deny_hosts"] == [f"host.pyro.internal:{first}"]
    assert probe(pyro, ws, "get", url_second)["status"] == 200  # no restart
    assert "403" in probe(pyro, ws, "get", url_first)["error"]

    for step in ("suspend", "cold", "reset"):
        if step == "suspend":
            pyro.stop_workspace(ws)
            pyro.start_workspace(ws)
        elif step == "cold":
            pyro.stop_workspace(ws, discard_memory=True)
            pyro.start_workspace(ws)
        else:
            pyro.reset_workspace(ws)
        assert probe(pyro, ws, "get", url_second)["status"] == 200, step
        assert "403" in probe(pyro, ws, "get", url_first)["error"], step

    # A damaged egress.json is written again from the workspace's record at start.
    vm = pyro.stop_workspace(ws, discard_memory=True)["vm_id"]
    (pyro._workspaces.vms.paths.vms_dir / vm / "egress.json").write_text("{not json")
    pyro.start_workspace(ws)
    assert probe(pyro, ws, "get", url_second)["status"] == 200
    assert "403" in probe(pyro, ws, "get", url_first)["error"]
    pyro.delete_workspace(ws)


def test_open_egress_keeps_the_host_out(pyro: Pyro, servers: dict[str, Any]) -> None:
    port = servers["allowed"]
    ws = pyro.create_workspace(network_policy="egress")["workspace_id"]
    assert pyro.status_workspace(ws)["egress"]["mode"] == "open"
    services = probe(pyro, ws, "get", f"http://host.pyro.internal:{port}/")
    assert services["status"] == 403 and "--allow-host-services" in services["body"]
    loopback = probe(pyro, ws, "get", f"http://127.0.0.1:{port}/")
    # 127.0.0.1 inside the guest is NO_PROXY: the guest's own loopback, not the host's.
    assert "error" in loopback
    private = probe(pyro, ws, "get", f"http://localhost.:{port}/")
    assert "error" in private or private["status"] == 403
    assert servers["seen"].requests == []
    pyro.delete_workspace(ws)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"allow_hosts": ["*"]}, "every host"),
        ({"allow_hosts": ["*.com"]}, "top-level"),
        ({"allow_hosts": ["10.0.0.1"]}, "IP address"),
        ({"allow_hosts": ["[::1]:80"]}, "IP address"),
        ({"allow_hosts": ["bad_host!"]}, "not a valid host name"),
        ({"allow_hosts": ["a.example:99999"]}, "port"),
        ({"allow_hosts": ["host.pyro.internal:80"]}, "--allow-host-services"),
        ({"allow_hosts": ["host.pyro.internal"], "allow_host_services": True}, "port"),
        (
            {"allow_hosts": ["a.example"], "secrets": {"T": {"value": "abcd", "hosts": ["b.ex"]}}},
            "does not allow",
        ),
        ({"secrets": {"T": {"value": "abcd", "hosts": "b.ex"}}}, "list"),
        ({"secrets": {"T": {"value": "abcd", "host": ["b.ex"]}}}, "unknown keys"),
    ],
)
def test_bad_rules_are_refused_at_create(
    pyro: Pyro, state_dir: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("*", r"\*").replace("[", r"\[")):
        pyro.create_workspace(network_policy="egress", **kwargs)
    assert pyro.list_workspaces()["workspaces"] == []


def test_rules_need_a_network(pyro: Pyro) -> None:
    with pytest.raises(InvalidArgument, match="network-policy egress"):
        pyro.create_workspace(allow_hosts=["a.example"])


def test_the_cli_sets_shows_and_changes_host_rules(
    cli_env: dict[str, str], test_ca: LocalCA, tmp_path: Path
) -> None:
    env = {**cli_env, "SSL_CERT_FILE": str(test_ca.bundle)}
    with serve(test_ca) as (port, seen):
        target = f"host.pyro.internal:{port}"
        unbound = pyro_cli(
            env, "workspace", "create", "--network-policy", "egress", "--secret-host", "X=a.example"
        )
        assert (
            unbound.returncode != 0 and "no --secret or --secret-file called 'X'" in unbound.stderr
        )
        token = tmp_path / "token"
        token.write_text(REAL)
        created = pyro_cli(
            env,
            *("workspace", "create", "--network-policy", "egress", "--allow-host", target),
            *("--allow-host-services", "--deny-host", "bad.example"),
            *("--secret-file", f"TOKEN={token}", "--secret-host", f"TOKEN={target}", "--json"),
        )
        assert created.returncode == 0, created.stderr
        workspace = json.loads(created.stdout)
        ws = workspace["workspace_id"]
        assert workspace["egress"]["secrets"]["TOKEN"]["hosts"] == [target]
        status = pyro_cli(env, "workspace", "status", ws)
        assert f"only {target}; deny bad.example; host services allowed" in status.stdout
        assert f"TOKEN -> {target} (guest: placeholder)" in status.stdout

        pyro_cli(env, "workspace", "file", "write", ws, ".probe.py", "--text-file", str(PROBE))
        run = pyro_cli(
            env,
            *("workspace", "exec", ws, "--", "python3", ".probe.py", "get"),
            *(f"https://{target}/cli", "Authorization=@/run/pyro-secrets/TOKEN"),
        )
        assert json.loads(run.stdout.splitlines()[-1])["status"] == 200, run
        assert seen.requests[-1]["headers"]["authorization"] == REAL

        changed = pyro_cli(env, "workspace", "update", ws, "--deny-host", target)
        assert changed.returncode == 0 and f"deny bad.example, {target}" in changed.stdout
        logs = pyro_cli(env, "workspace", "logs", ws)
        assert f"out {target} allowed" in logs.stdout and "secrets TOKEN" in logs.stdout
        summary = pyro_cli(env, "workspace", "summary", ws)
        assert "egress rules changed" in summary.stdout and f"out {target}" in summary.stdout
        assert pyro_cli(env, "workspace", "delete", ws).returncode == 0
