#!/usr/bin/env bash
# Installs what pyro needs on a Debian 12 host: the apt packages (when root),
# uv (from PyPI, when missing) and the project's Python environment.
# Without root it prints the exact command to run instead.
set -euo pipefail

PACKAGES=(qemu-system-x86 qemu-utils debootstrap e2fsprogs busybox-static cpio kmod git npm skopeo umoci docker-registry)
# Commands that prove each package is present (same order). git seeds
# workspaces from checkouts; npm installs the MCP Inspector the tests use.
PROBES=(qemu-system-x86_64 qemu-img debootstrap mkfs.ext4 busybox cpio modinfo git npm skopeo umoci docker-registry)

missing=()
for i in "${!PACKAGES[@]}"; do
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "${PROBES[$i]}" >/dev/null 2>&1; then
        missing+=("${PACKAGES[$i]}")
    fi
done

if ((${#missing[@]})); then
    if [ "$(id -u)" -eq 0 ]; then
        echo "[setup] installing ${missing[*]}" >&2
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    else
        echo "[setup] missing host packages: ${missing[*]}" >&2
        echo "[setup] run: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
fi

# The guest kernel comes from apt's package lists; make sure they exist.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -q >&2
    else
        echo "[setup] apt has no package lists; run: sudo apt-get update" >&2
        exit 1
    fi
fi

if ! command -v uv >/dev/null 2>&1; then
    echo "[setup] installing uv from PyPI" >&2
    python3 -m pip install --quiet uv >&2 || python3 -m pip install --quiet --user uv >&2
    export PATH="$HOME/.local/bin:$PATH"
fi

uv sync --frozen --quiet >&2
echo "[setup] host ready" >&2
