import pytest

from pyro_mcp.environments.catalog import CATALOG, get_spec
from pyro_mcp.errors import NotFound


def test_the_catalog_has_the_three_curated_environments() -> None:
    assert list(CATALOG) == ["debian:12-base", "debian:12", "debian:12-build"]
    assert "git" in get_spec("debian:12").packages
    assert "build-essential" in get_spec("debian:12-build").packages
    assert "git" not in get_spec("debian:12-base").packages


def test_every_environment_carries_what_the_agent_needs() -> None:
    for spec in CATALOG.values():
        assert {"python3-minimal", "libpython3.11-stdlib"} <= set(spec.packages)


def test_an_unknown_environment_error_lists_the_valid_names() -> None:
    with pytest.raises(NotFound) as caught:
        get_spec("ubuntu:24.04")
    message = str(caught.value)
    assert "ubuntu:24.04" in message
    for name in CATALOG:
        assert name in message
