"""A team server shares nothing it should not: what a hostile second principal
tries through the HTTP API, with an ordinary token, and what it gets.

Each refusal is a clean InvalidArgument and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp import InvalidArgument, Pyro
from pyro_mcp.errors import NotFound, PyroError, QuotaExceeded
from pyro_mcp.server import audit
from pyro_mcp.server.audit import AuditLog
from pyro_mcp.server.calls import PrincipalCalls
from pyro_mcp.server.registry import Principal, Registry
from pyro_mcp.transport import RemoteTransport
from tests.environments.images_helper import add_layer, busybox_image, entry, outward_address
from tests.server.conftest import RemoteServer, pyro_command, serving

pytestmark = pytest.mark.vm

PROBE = Path(__file__).parent.parent / "egress" / "guest_probe.py"


@pytest.fixture(scope="module")
def team(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, warm_environment: dict[str, Any]
) -> Iterator[RemoteServer]:
    """mallory (ordinary), carol (granted private egress and host services), ops (admin)."""
    tokens = {
        "mallory": [],
        "carol": ["--allow", "private-egress", "host-services"],
        "ops": ["--admin"],
    }
    with serving(tmp_path_factory.mktemp("team"), cache_dir, tokens) as remote:
        yield remote


def raw_call(server: RemoteServer, who: str, method: str, **arguments: Any) -> Any:
    """The call as a hostile client sends it: no client-side crossing at all."""
    transport = RemoteTransport(server.url, server.tokens[who])
    try:
        return transport._call(method, arguments, lambda _: None)
    finally:
        transport.close()


def spool_is_empty(server: RemoteServer) -> bool:
    spool = server.state_dir / "server-spool"
    return all(
        not (spool / kind).exists() or not any((spool / kind).iterdir())
        for kind in ("uploads", "downloads")
    )


@pytest.mark.parametrize("form", ["oci-archive", "oci", "docker-archive"])
def test_a_reference_naming_a_server_path_is_refused_with_the_upload_route(
    team: RemoteServer, tmp_path: Path, form: str
) -> None:
    layout = tmp_path / "layout"
    busybox_image(layout)
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    path = f"{layout}:bb" if form == "oci" else str(archive)
    with pytest.raises(InvalidArgument, match="upload") as refused:
        raw_call(team, "mallory", "pull_environment", reference=f"{form}:{path}", name="stolen:1")
    assert "path of the server" in str(refused.value)
    listed = {e["name"] for e in team.sdk("ops").list_environments()}
    assert "stolen:1" not in listed


def test_local_references_travel_and_a_lying_upload_is_refused(
    team: RemoteServer, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    busybox_image(layout)
    ops = team.sdk("ops")
    # oci:./layout:tag from the client: packed, uploaded, installed there.
    pulled = ops.pull_environment(f"oci:{layout}:bb", name="travelled:1")
    assert pulled["name"] == "travelled:1"
    ran = ops.run_in_vm("travelled:1", "cat /etc/passwd")
    assert "app:x:1000" in ran["stdout"]
    # An oci-archive of the same layout: the file goes as it is.
    archive = tmp_path / "bb.tar"
    subprocess.run(
        ["skopeo", "copy", f"oci:{layout}:bb", f"oci-archive:{archive}"],
        check=True,
        capture_output=True,
    )
    assert ops.pull_environment(f"oci-archive:{archive}", name="archived:1")["name"] == (
        "archived:1"
    )
    # docker-archive:./img.tar through the CLI, as a laptop types it.
    docker = tmp_path / "img.tar"
    subprocess.run(
        ["skopeo", "copy", f"oci:{layout}:bb", f"docker-archive:{docker}:bb:1"],
        check=True,
        capture_output=True,
    )
    done = subprocess.run(
        pyro_command(
            "--remote",
            team.url,
            "env",
            "pull",
            "docker-archive:./img.tar",
            "--name",
            "docked:1",
            "--no-prepare",
            "--json",
        ),
        env={**team.base_env, "PYRO_TOKEN": team.tokens["ops"], "PYRO_HOME": "/nonexistent"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "docked:1"
    assert ops.run_in_vm("docked:1", "echo $GREETING")["stdout"] == "hello from the image\n"
    # A tar that is not what it says: refused after the upload, the spool emptied.
    liar = tmp_path / "liar.tar"
    note = tmp_path / "note.txt"
    note.write_text("not an image\n")
    with tarfile.open(liar, "w") as tar:
        tar.add(note, arcname="note.txt")
    for form in ("oci-archive", "docker-archive"):
        with pytest.raises(InvalidArgument, match=f"not an {form} image"):
            ops.pull_environment(f"{form}:{liar}", name="liar:1")
    assert spool_is_empty(team)
    for name in ("travelled:1", "archived:1", "docked:1"):
        ops.remove_environment(name)


def test_operator_switches_need_the_capability(team: RemoteServer) -> None:
    for switch, capability in (
        ("allow_private_egress", "private-egress"),
        ("allow_host_services", "host-services"),
    ):
        with pytest.raises(InvalidArgument, match=f"--allow {capability}"):
            team.sdk("mallory").create_workspace(network_policy="egress", **{switch: True})
    with pytest.raises(InvalidArgument, match="--allow insecure-registry"):
        team.sdk("mallory").pull_environment("registry.example.org/a/b:1", insecure_registry=True)
    assert team.sdk("mallory").list_workspaces()["workspaces"] == []
    # A registry on the server's loopback (or any address of it) is the operator's too.
    with pytest.raises(InvalidArgument, match="--allow private-registry"):
        team.sdk("mallory").pull_environment("127.0.0.1:5999/team/app:1")
    with pytest.raises(InvalidArgument, match="--allow private-registry"):
        team.sdk("mallory").pull_environment(f"{outward_address()}:5999/team/app:1")
    # Granted, the same call goes through.
    carol = team.sdk("carol")
    created = carol.create_workspace(network_policy="egress", allow_private_egress=True)
    try:
        assert created["egress"]["allow_private_egress"] is True
    finally:
        carol.delete_workspace(created["workspace_id"])


def test_token_create_refuses_an_unknown_capability(team: RemoteServer) -> None:
    done = team.cli("server", "token", "create", "eve", "--allow", "root", check=False)
    assert done.returncode == 2 and "private-egress" in done.stderr
    registry = Registry(team.state_dir / "server.db")
    with pytest.raises(InvalidArgument, match="not a capability"):
        registry.create_token("eve", capabilities=["root"])
    listed = team.cli("server", "token", "list", "--json")
    tokens = {t["name"]: t for t in json.loads(listed.stdout)["tokens"]}
    assert "eve" not in tokens
    assert tokens["carol"]["capabilities"] == ["host-services", "private-egress"]


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"the host itself\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def test_a_guest_never_reaches_an_address_of_the_host(team: RemoteServer) -> None:
    """A service bound to every interface, reached by the host's outward address
    with ordinary open egress: refused by the proxy (it used to answer)."""
    service = ThreadingHTTPServer(("0.0.0.0", 0), _Hello)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    port = service.server_address[1]
    address = outward_address()
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(f"http://{address}:{port}/", timeout=10) as answer:
        assert answer.read() == b"the host itself\n"  # from the host itself, it answers
    mallory = team.sdk("mallory")
    created = mallory.create_workspace(network_policy="egress")
    try:
        ws = created["workspace_id"]
        mallory.write_workspace_file(ws, "/workspace/.probe.py", PROBE.read_text())
        ran = mallory.exec_workspace(
            ws, f"python3 /workspace/.probe.py get http://{address}:{port}/", timeout_seconds=90
        )
        answer = json.loads(ran["stdout"].strip().splitlines()[-1])
        assert answer.get("status") == 403, answer
        assert "the host itself" not in json.dumps(answer)
        logged = [e for e in mallory.logs_workspace(ws)["entries"] if e["kind"] == "egress"]
        assert any("this host's own" in json.dumps(e) for e in logged), logged
    finally:
        mallory.delete_workspace(created["workspace_id"])
        service.shutdown()
        service.server_close()


def test_an_argument_that_declares_no_crossing_is_refused(tmp_path: Path) -> None:
    """A new SDK method whose path argument says nothing of how it crosses is
    closed on the server until it does."""

    class Extended(Pyro):
        def frobnicate(self, target: str | Path | None = None) -> dict[str, Any]:
            return {"read": Path(target).read_text() if target else None}

    Extended.frobnicate.__pyro_routed__ = True  # type: ignore[attr-defined]
    engine = Extended(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    registry = Registry(tmp_path / "server.db")
    calls = PrincipalCalls(engine, registry, Principal("mallory"), tmp_path / "spool")
    secret = tmp_path / "server-secret"
    secret.write_text("the server's own file")
    with pytest.raises(InvalidArgument, match="declares no way for target to cross"):
        calls.call("frobnicate", {"target": str(secret)}, lambda _: None)
    assert calls.call("frobnicate", {}, lambda _: None) == {"read": None}
    with pytest.raises(InvalidArgument, match="not a pyro SDK method"):
        calls.call("__init__", {}, lambda _: None)
    with pytest.raises(NotFound):
        calls.call("status_workspace", {"workspace": "nobody"}, lambda _: None)


def audit_entries(server: RemoteServer, *flags: str) -> list[dict[str, Any]]:
    done = server.cli("server", "audit", "--json", *flags)
    entries: list[dict[str, Any]] = json.loads(done.stdout)["entries"]
    return entries


def test_every_call_is_audited_without_its_values_and_an_unwritable_trail_refuses(
    team: RemoteServer, tmp_path: Path
) -> None:
    mallory = team.sdk("mallory")
    with pytest.raises(InvalidArgument):
        mallory.create_workspace(network_policy="egress", allow_host_services=True)
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "notes.txt").write_text("seeded\n")
    created = mallory.create_workspace(
        name="audited", seed_path=seed, secrets={"T": "sup3rsecret-value"}
    )
    mallory.exec_workspace("audited", "true", secret_env={"T": "T"})
    mallory.export_workspace("audited", "notes.txt", tmp_path / "back.txt")
    mallory.delete_workspace(created["workspace_id"])
    entries = audit_entries(team, "--principal", "mallory", "--since", "10m")
    refused = [e for e in entries if e["result"] == "refused"]
    assert any(
        e["method"] == "create_workspace" and "host-services" in e["reason"] for e in refused
    )
    assert not any(e["allowed"] for e in refused)
    done = [e for e in entries if e["result"] == "ok"]
    assert {"create_workspace", "exec_workspace", "delete_workspace"} <= {e["method"] for e in done}
    assert any(e.get("workspace") == "audited" for e in done)
    # The seed's upload and the export's download are lines of their own, with sizes.
    transfers = {e["method"]: e for e in done if e["method"] in ("upload", "download")}
    assert set(transfers) == {"upload", "download"}, entries
    assert transfers["upload"]["bytes"] > 0 and transfers["download"]["bytes"] > 0
    assert all(e["principal"] == "mallory" and e["duration_ms"] >= 0 for e in entries)
    trail = (team.state_dir / "audit.jsonl").read_text()
    assert "sup3rsecret" not in trail and "python3" not in trail
    assert audit_entries(team, "--principal", "nobody") == []
    human = team.cli("server", "audit", "--principal", "mallory")
    assert "PRINCIPAL" in human.stdout and "refused" in human.stdout
    bad = team.cli("server", "audit", "--since", "yesterday-ish", check=False)
    assert bad.returncode != 0 and "ISO time" in bad.stderr
    # A trail the server cannot write: every call is refused, saying why.
    trail_path = team.state_dir / "audit.jsonl"
    kept = trail_path.with_name("audit.kept")
    trail_path.rename(kept)
    trail_path.mkdir()
    try:
        with pytest.raises(PyroError, match="refuses calls rather than run unaudited"):
            mallory.list_workspaces()
    finally:
        trail_path.rmdir()
        kept.rename(trail_path)
    assert mallory.list_workspaces()["count"] == 0


def test_the_audit_trail_rotates_by_size(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=600, keep=2)
    for index in range(30):
        log.record(principal="p", method=f"m{index}", arguments={}, error=None, seconds=0.01)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 600 for p in tmp_path.iterdir())
    methods = [e["method"] for e in audit.read(tmp_path / "audit.jsonl")]
    assert methods == sorted(methods, key=lambda m: int(m[1:]))  # oldest first
    assert methods[-1] == "m29"
    with pytest.raises(InvalidArgument, match="ISO time"):
        audit.parse_since("soon")
    assert audit.parse_since("2h") < audit.parse_since("1h")


def test_environments_belong_to_principals(team: RemoteServer, tmp_path: Path) -> None:
    """The third probe: one principal replacing what another's agents boot."""
    layout = tmp_path / "layout"
    reference = busybox_image(layout)
    add_layer(layout, "bb", [(entry("home/app/whose.txt", uid=1000), b"carol's\n")])
    mallory, carol, ops = team.sdk("mallory"), team.sdk("carol"), team.sdk("ops")
    mine = tmp_path / "mine"
    plain = busybox_image(mine)
    assert mallory.pull_environment(plain, name="team-app:1")["name"] == "team-app:1"
    # carol's team-app:1 is carol's: even with force it leaves mallory's alone.
    assert carol.pull_environment(reference, name="team-app:1", force=True)["name"] == "team-app:1"
    whose = "cat /home/app/whose.txt 2>/dev/null || echo nobody"
    assert mallory.run_in_vm("team-app:1", whose)["stdout"] == "nobody\n"
    assert carol.run_in_vm("team-app:1", whose)["stdout"] == "carol's\n"
    assert "team-app:1" in {e["name"] for e in mallory.list_environments()}
    assert mallory.inspect_environment("team-app:1")["name"] == "team-app:1"
    # An admin's environment is shared, and read-only to the rest.
    ops.pull_environment(plain, name="shared-app:1")
    assert "shared-app:1" in {e["name"] for e in carol.list_environments()}
    assert carol.run_in_vm("shared-app:1", "echo $GREETING")["stdout"] == "hello from the image\n"
    with pytest.raises(InvalidArgument, match="shared by everybody"):
        carol.pull_environment(reference, name="shared-app:1", force=True)
    with pytest.raises(InvalidArgument, match="only an admin rebuilds"):
        carol.pull_environment("debian:12", force=True)
    with pytest.raises(InvalidArgument, match="only an admin removes"):
        carol.remove_environment("shared-app:1")
    with pytest.raises(InvalidArgument, match="shared by everybody"):
        carol.build_environment("debian:12", context=tmp_path, file=_dockerfile(tmp_path))
    with pytest.raises(InvalidArgument, match="this server's own"):
        carol.inspect_environment(_stored_name(team, "mallory", "team-app:1"))
    # Nobody else's name shows, in lists or in errors.
    for principal in (mallory, carol):
        listed = json.dumps(principal.list_environments())
        assert "u-" not in listed.replace("ubuntu-", "")
    with pytest.raises(NotFound) as missing:
        mallory.remove_environment("nothing:1")
    assert _stored_name(team, "carol", "team-app:1") not in str(missing.value)
    # rm acts on the caller's own.
    mallory.remove_environment("team-app:1")
    assert carol.run_in_vm("team-app:1", whose)["stdout"] == "carol's\n"
    assert "team-app:1" not in {e["name"] for e in mallory.list_environments()}
    carol.prune_environments(all=True)
    assert "team-app:1" not in {e["name"] for e in carol.list_environments()}
    ops.remove_environment("shared-app:1")


def test_a_token_keeps_to_its_environment_quota(team: RemoteServer, tmp_path: Path) -> None:
    team.token("tight", "--max-env-gib", "0")
    with pytest.raises(QuotaExceeded, match="--max-env-gib 0"):
        team.sdk("tight").pull_environment(busybox_image(tmp_path / "layout"), name="any:1")
    assert "any:1" not in {e["name"] for e in team.sdk("ops").list_environments()}


def _dockerfile(folder: Path) -> Path:
    file = folder / "Dockerfile"
    file.write_text("FROM debian:12\n")
    return file


def _stored_name(server: RemoteServer, principal: str, name: str) -> str:
    return f"u-{hashlib.sha256(principal.encode()).hexdigest()[:8]}.{name}"


def test_env_save_under_a_shared_name_is_refused_and_saves_nothing(team: RemoteServer) -> None:
    mallory = team.sdk("mallory")
    created = mallory.create_workspace(name="saver")
    try:
        before = {e["name"]: e.get("path") for e in team.sdk("ops").list_environments()}
        for shared in ("debian:12", "debian:12-build"):
            with pytest.raises(InvalidArgument, match="shared by everybody"):
                mallory.save_environment("saver", shared)
        after = {e["name"]: e.get("path") for e in team.sdk("ops").list_environments()}
        assert after == before
        entries = audit_entries(team, "--principal", "mallory", "--since", "5m")
        assert any(e["method"] == "save_environment" and e["result"] == "refused" for e in entries)
    finally:
        mallory.delete_workspace(created["workspace_id"])


def test_a_dockerfile_from_names_the_principals_own_and_never_a_server_file(
    team: RemoteServer, tmp_path: Path
) -> None:
    mallory, carol = team.sdk("mallory"), team.sdk("carol")
    layout = tmp_path / "layout"
    reference = busybox_image(layout)
    add_layer(layout, "bb", [(entry("home/app/whose.txt", uid=1000), b"carol's\n")])
    carol.pull_environment(reference, name="base-app:1")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM base-app:1\nENV BUILT=yes\n")
    try:
        assert carol.build_environment("on-top:1", context=context)["name"] == "on-top:1"
        ran = carol.run_in_vm("on-top:1", "cat /home/app/whose.txt; echo $BUILT")
        assert ran["stdout"] == "carol's\nyes\n", ran
        # mallory has no base-app:1, and carol's is not hers to build on.
        with pytest.raises(InvalidArgument) as refused:
            mallory.build_environment("theirs:1", context=context)
        assert _stored_name(team, "carol", "base-app:1") not in str(refused.value)
        # A FROM (or a project's image) never opens a file of the server, and
        # whether one exists is not said.
        for source in ("oci-archive:/etc/hostname", "oci-archive:/no/such.tar", "oci:/var/lib"):
            (context / "Dockerfile").write_text(f"FROM {source}\n")
            with pytest.raises(InvalidArgument, match="names a path of the server"):
                mallory.build_environment("stolen:1", context=context)
        assert "stolen:1" not in {e["name"] for e in mallory.list_environments()}
    finally:
        carol.prune_environments(all=True)


def test_env_save_installs_into_the_principals_own_namespace(team: RemoteServer) -> None:
    mallory, carol, ops = team.sdk("mallory"), team.sdk("carol"), team.sdk("ops")
    created = mallory.create_workspace(name="keeper")
    try:
        mallory.exec_workspace("keeper", "echo kept > /opt/kept.txt")
        assert mallory.save_environment("keeper", "kept:1")["name"] == "kept:1"
    finally:
        mallory.delete_workspace(created["workspace_id"])
    try:
        assert "kept:1" in {e["name"] for e in mallory.list_environments()}
        assert "kept:1" not in {e["name"] for e in carol.list_environments()}
        stored = _stored_name(team, "mallory", "kept:1")
        assert stored in {e["name"] for e in ops.list_environments()}
        assert mallory.run_in_vm("kept:1", "cat /opt/kept.txt")["stdout"] == "kept\n"
        with pytest.raises(NotFound):
            carol.run_in_vm("kept:1", "true")
    finally:
        mallory.remove_environment("kept:1")
