"""The curated environments pyro can build."""

from __future__ import annotations

from dataclasses import dataclass

from pyro_mcp.errors import NotFound
from pyro_mcp.names import shown

# The guest agent needs json, shutil, pty and friends, which python3-minimal
# lacks; libpython3.11-stdlib adds them for about 12 MB.
_AGENT_PACKAGES = ("python3-minimal", "libpython3.11-stdlib")
_BASE_PACKAGES = (*_AGENT_PACKAGES, "ca-certificates", "procps")


@dataclass(frozen=True)
class EnvironmentSpec:
    """One catalog entry: what goes into the image and how large it may grow."""

    name: str
    description: str
    suite: str
    packages: tuple[str, ...]
    disk_size_mib: int

    @property
    def slug(self) -> str:
        """The name as a directory name (``debian:12`` -> ``debian-12``)."""
        return self.name.replace(":", "-")


# The curated catalog's version (`pyro env list` shows it): it changes when a
# curated environment's contents do.
CATALOG_VERSION = "1.0"

CATALOG: dict[str, EnvironmentSpec] = {
    spec.name: spec
    for spec in (
        EnvironmentSpec(
            name="debian:12-base",
            description="Debian 12 minimal: shell and core tools",
            suite="bookworm",
            packages=_BASE_PACKAGES,
            disk_size_mib=2048,
        ),
        EnvironmentSpec(
            name="debian:12",
            description="Debian 12 with git",
            suite="bookworm",
            packages=(*_BASE_PACKAGES, "git"),
            disk_size_mib=2048,
        ),
        EnvironmentSpec(
            name="debian:12-build",
            description=(
                "Debian 12 with git and what Python and C projects build with: gcc, make, "
                "pkg-config, python3-dev, pip, venv, libffi/libssl/zlib/sqlite headers, curl"
            ),
            suite="bookworm",
            packages=(
                *_BASE_PACKAGES,
                "git",
                "build-essential",
                "pkg-config",
                "python3",
                "python3-dev",
                "python3-pip",
                "python3-venv",
                "libffi-dev",
                "libssl-dev",
                "zlib1g-dev",
                "libsqlite3-dev",
                "curl",
            ),
            disk_size_mib=4096,
        ),
    )
}


def slug(name: str) -> str:
    """An environment name as a directory name (``node:22`` -> ``node-22``)."""
    return name.replace(":", "-").replace("/", "-")


def get_spec(name: str) -> EnvironmentSpec:
    """The catalog entry called ``name``.

    Raises:
        NotFound: the name is not in the catalog; the message lists the valid names.
    """
    try:
        return CATALOG[name]
    except KeyError:
        valid = ", ".join(CATALOG)
        raise NotFound(
            f"unknown environment {shown(name)}; valid environments: {valid} (see `pyro env list`)"
        ) from None
