"""The host's package index settings reach a guest with egress; credentials do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyro_mcp import Pyro
from pyro_mcp.workspaces.package_index import host_settings


def test_settings_come_from_pip_config_npmrc_and_variables(tmp_path: Path) -> None:
    (tmp_path / ".config" / "pip").mkdir(parents=True)
    (tmp_path / ".config" / "pip" / "pip.conf").write_text(
        "[global]\nindex-url = https://mirror.example/simple\ntimeout = 60\n"
        "[install]\ntrusted-host = mirror.example\n"
    )
    (tmp_path / ".npmrc").write_text("fund=false\nregistry=https://npm.example/\n")
    settings = host_settings(
        {
            "UV_INDEX_URL": "https://mirror.example/simple",
            "PIP_EXTRA_INDEX_URL": "https://user:token@private.example/simple",
        },
        tmp_path,
    )
    assert settings.pip == {
        "index-url": "https://mirror.example/simple",
        "trusted-host": "mirror.example",
    }
    assert settings.env == {"UV_INDEX_URL": "https://mirror.example/simple"}
    assert settings.npm_registry == "https://npm.example/"
    assert settings.withheld == ["PIP_EXTRA_INDEX_URL"]  # credentials stay on the host
    assert "index-url = https://mirror.example/simple" in settings.pip_conf()


def test_a_guest_with_egress_gets_the_hosts_index_settings(
    pyro: Pyro, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text(
        "[global]\nextra-index-url = https://x.example/simple\n"
    )
    (home / ".npmrc").write_text("registry=https://npm.example/\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("UV_INDEX_URL", "https://uv.example/simple")
    ws = pyro.create_workspace(network=True)["workspace_id"]
    try:
        seen = pyro.exec_workspace(ws, "cat /etc/pip.conf /root/.npmrc; echo $UV_INDEX_URL")
        assert "extra-index-url = https://x.example/simple" in seen["stdout"]
        assert "registry=https://npm.example/" in seen["stdout"]
        assert seen["stdout"].endswith("https://uv.example/simple\n")
    finally:
        pyro.delete_workspace(ws)
