"""Environments from OCI images: references, fetching, and layers shared by digest.

Fetching is ``skopeo copy`` (Debian's package; no root, no daemon) into one
OCI image layout in the cache, ``oci/``: its blobs are stored by digest, so a
layer two images share is fetched and kept once. skopeo verifies every blob
against its digest, reads the container tools' credential files itself
(``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.docker/config.json``) and
never prints a credential.

The root disk is made from the layers in a guest (``vm/image_builder.py``),
as root there, so owners, setuid bits, file capabilities and device nodes
are kept without root on the host. Disks are shared the way the layers are:
``layers/<size>/<chain id>.qcow2`` holds the root filesystem after a prefix
of an image's layers (the OCI *chain id* names that prefix), as a qcow2 over
the next shorter prefix it was built on. An image whose first layers are an
image pulled before starts from that image's disk and adds only its own
layers; two environments with a common base hold the base once.

Every layer is listed on the host before the guest sees it: its digest and
its uncompressed digest (the config's ``diff_ids``) are checked, names that
leave the root are refused, and whiteouts become the removals the guest
makes before it extracts the layer.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pyro_mcp import crossings, host_tools, names
from pyro_mcp.egress import fetch_proxy
from pyro_mcp.egress.policy import EgressPolicy
from pyro_mcp.environments import builder
from pyro_mcp.errors import EnvironmentBuildError, InvalidArgument

# POSIX file locks: the engine's. A remote client on Windows imports this module
# (through the SDK) but never takes one.
with contextlib.suppress(ImportError):
    import fcntl

Progress = Callable[[str], None]

SKOPEO = host_tools.SKOPEO
ZSTD = host_tools.ZSTD
DEFAULT_DISK_MIB = 8192
CHUNK_BYTES = 4 * 1024 * 1024
PULL_TIMEOUT_SECONDS = 3600
LOOPBACK = re.compile(r"^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}
AUTH_FILES = "$XDG_RUNTIME_DIR/containers/auth.json or ~/.docker/config.json"


class ImageError(EnvironmentBuildError):
    """An image that cannot be fetched or made into an environment."""


TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

# Checks pyro server puts on what this thread's calls fetch (calls.py), wherever
# the reference came from (an argument, a Dockerfile's FROM, a project's
# devcontainer.json): each registry host[:port] before it is contacted, and
# each local image path (oci:, oci-archive:, docker-archive:) before it is read.
Check = Callable[[str], None]
_registry_check: contextvars.ContextVar[Check | None] = contextvars.ContextVar(
    "registry_check", default=None
)
_local_check: contextvars.ContextVar[Check | None] = contextvars.ContextVar(
    "local_check", default=None
)


# Which of this thread's fetches from a registry run confined, and under what
# egress policy (``egress/fetch_proxy.py``: by default only public addresses,
# each checked as it is connected to).
Confine = Callable[[str], EgressPolicy | None]
_confine: contextvars.ContextVar[Confine | None] = contextvars.ContextVar("confine", default=None)


def confined_fetches(policy_for: Confine) -> contextlib.AbstractContextManager[None]:
    """A fetch from ``registry`` runs confined under ``policy_for(registry)`` (None: not)."""
    return _checking(_confine, policy_for)


def registry_check(check: Check) -> contextlib.AbstractContextManager[None]:
    """Run ``check(registry)`` before this thread contacts a registry; it raises to refuse."""
    return _checking(_registry_check, check)


def local_image_check(check: Check) -> contextlib.AbstractContextManager[None]:
    """Run ``check(path)`` before this thread reads a local image; it raises to refuse."""
    return _checking(_local_check, check)


@contextlib.contextmanager
def _checking(variable: contextvars.ContextVar[Any], check: Callable[[str], Any]) -> Iterator[None]:
    token = variable.set(check)
    try:
        yield
    finally:
        variable.reset(token)


def not_an_image(path: Path, form: str) -> str | None:
    """Why ``path`` is not an image of ``form`` (``oci`` layout folder, ``oci-archive``
    or ``docker-archive`` tar), or None when its top has what that form needs."""
    needed = {"oci": ("oci-layout", "index.json"), "oci-archive": ("oci-layout", "index.json")}
    wanted = needed.get(form, ("manifest.json",))
    if form == "oci":
        if not path.is_dir():
            return "not a folder"
        present = {name for name in wanted if (path / name).is_file()}
    else:
        try:
            with tarfile.open(path, "r:") as tar:
                present = {
                    member.name.removeprefix("./")
                    for member in tar
                    if member.isfile() and member.name.removeprefix("./") in wanted
                }
        except (OSError, tarfile.TarError) as exc:
            return f"not a tar archive ({exc})"
    missing = [name for name in wanted if name not in present]
    return f"no {' or '.join(missing)} at its top" if missing else None


@dataclass(frozen=True)
class Reference:
    """Where an image comes from, as the user wrote it and as skopeo takes it."""

    text: str
    source: str  # a skopeo transport reference
    default_name: str
    registry: str | None = None  # host[:port] when it is a registry


def parse_reference(text: str) -> Reference:
    """``text`` as one of the reference forms ``pyro env pull`` takes.

    Raises:
        InvalidArgument: none of them; the message lists the forms.
    """
    forms = (
        "registry.example.org/team/node:22, docker://..., oci:PATH[:TAG], "
        "oci-archive:FILE, docker-archive:FILE, or a curated name (pyro env list)"
    )
    if not isinstance(text, str) or not text.strip() or any(c.isspace() for c in text):
        raise InvalidArgument("reference", f"name an image: {forms}")
    split = crossings.split_local_image(text)
    if split is not None:
        form, path, tag = split
        check = _local_check.get()
        if check is not None:
            check(path)  # before looking: whether a refused path exists is not said
        local = Path(path).expanduser().absolute()
        if not local.exists():
            raise InvalidArgument("reference", f"{local} does not exist")
        stem = local.name.split(".")[0] if local.is_file() else local.name
        source = f"{form}:{local}" + (f":{tag}" if tag else "")
        return Reference(text, source, _clean_name(stem, tag or "latest"))
    remote = text.removeprefix("docker://")
    first = remote.split("/", 1)[0]
    if remote == text and "/" in remote and not ("." in first or ":" in first):
        raise InvalidArgument(
            "reference", f"{text!r} does not name a registry (a host with a dot); use {forms}"
        )
    if "/" not in remote and remote == text:
        raise InvalidArgument("reference", f"{text!r} is not a curated name or an image: {forms}")
    repository, digest = [*remote.split("@", 1), ""][:2]
    last = repository.rsplit("/", 1)[-1]
    tag = ""
    if ":" in last:
        last, tag = last.split(":", 1)
    label = f"sha-{digest.removeprefix('sha256:')[:12]}" if digest else (tag or "latest")
    registry = first if ("." in first or ":" in first or first == "localhost") else "docker.io"
    return Reference(text, f"docker://{remote}", _clean_name(last, label), registry)


def check_name(name: str) -> str:
    return names.check_environment("name", name)


def _clean_name(stem: str, tag: str) -> str:
    def clean(part: str) -> str:
        return re.sub(r"[^a-z0-9._-]", "-", part.lower()).strip("-._")[:63] or "image"

    return f"{clean(stem)}:{clean(tag)}"


# ------------------------------------------------------------------ fetching


@dataclass
class Layer:
    digest: str
    size: int
    compression: str
    diff_id: str = ""
    chain_id: str = ""
    unpacked_bytes: int = 0
    remove: list[str] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)
    entries: list[tuple[str, bool]] = field(default_factory=list)
    # The entries whose path lies below with the other type (the guest removes
    # those first), when everything below is known; None: the guest checks all.
    conflicts: list[tuple[str, bool]] | None = None

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


@dataclass
class Image:
    manifest_digest: str
    config_digest: str
    config: dict[str, Any]
    layers: list[Layer]


USERS_LOCK = "oci.users"


class ImageStore:
    """The shared OCI layout (``oci/``) and the layer disks (``layers/``)."""

    def __init__(self, cache_dir: Path) -> None:
        self.layout = cache_dir / "oci"
        self._proxy: fetch_proxy.FetchProxy | None = None
        self.layers_dir = cache_dir / "layers"

    def blob(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise ImageError(f"the image names a blob by an unusable digest {digest[:80]!r}")
        return self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Held (shared) by a pull or push from its first fetch to its last read of a
        blob: pruning removes no blob while anyone holds it (``cache._prune_images``)."""
        self.layout.parent.mkdir(parents=True, exist_ok=True)
        with (self.layout.parent / USERS_LOCK).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.layout.mkdir(parents=True, exist_ok=True)
        with (self.layout.parent / "oci.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def fetch(self, reference: Reference, progress: Progress, *, insecure: bool = False) -> Image:
        """Copy the image into the layout (blobs already there are not fetched again)."""
        check = _registry_check.get()
        if check is not None and reference.registry is not None:
            check(reference.registry)
        confine = _confine.get()
        policy = confine(reference.registry) if confine and reference.registry else None
        if policy is None:
            return self._fetch(reference, progress, insecure)
        with fetch_proxy.fetch_proxy(policy) as self._proxy:
            try:
                return self._fetch(reference, progress, insecure)
            except ImageError as exc:
                if self._proxy.refusals:
                    raise _refused_fetch(reference, self._proxy.refusals[0]) from exc
                raise
            finally:
                self._proxy = None

    def _fetch(self, reference: Reference, progress: Progress, insecure: bool) -> Image:
        tag = f"pyro-{uuid.uuid4().hex[:12]}"
        command = ["copy", "--override-os", "linux", "--override-arch", "amd64"]
        if reference.registry is not None:
            plain = insecure or bool(LOOPBACK.match(reference.registry))
            command.append(f"--src-tls-verify={'false' if plain else 'true'}")
        command += [reference.source, f"oci:{self.layout}:{tag}"]
        progress(f"phase=fetch {reference.text}")
        missing = self._missing_layers(reference, insecure)
        with self.locked():
            done = self._copy_with_progress(command, missing, progress)
            if done.returncode != 0:
                raise self._fetch_error(reference, done.stderr, insecure)
            try:
                return self._read(tag)
            finally:
                self._untag(tag)

    def _missing_layers(self, reference: Reference, insecure: bool) -> list[tuple[str, int]] | None:
        """The image's layers not in the cache yet, as (digest, compressed size),
        in the manifest's order (None: unknown)."""
        flags = ["--command-timeout", "60s", "inspect", "--raw"]
        if reference.registry is not None:
            plain = insecure or bool(LOOPBACK.match(reference.registry))
            flags.append(f"--tls-verify={'false' if plain else 'true'}")
        try:
            inspect = self._skopeo([*flags, reference.source])
            manifest = json.loads(host_tools.run(*inspect, capture_output=True).stdout)
            if "manifests" in manifest and reference.registry is not None:  # an index
                chosen = next(
                    m["digest"]
                    for m in manifest["manifests"]
                    if (m.get("platform") or {}).get("architecture") == "amd64"
                    and (m.get("platform") or {}).get("os") == "linux"
                )
                repository = re.sub(r"(@.*|:[^:/]*)$", "", reference.source)
                source = f"{repository}@{chosen}"
                manifest = json.loads(
                    host_tools.run(*self._skopeo([*flags, source]), capture_output=True).stdout
                )
            layers = manifest.get("layers")
            if not isinstance(layers, list):
                return None
            return [
                (str(layer["digest"]), int(layer.get("size", 0)))
                for layer in layers
                if not self._has(layer)
            ]
        except (
            subprocess.TimeoutExpired,
            ValueError,
            AttributeError,
            TypeError,
            KeyError,
            StopIteration,
        ):
            return None

    def _skopeo(self, args: list[str]) -> tuple[host_tools.Program, list[str]]:
        """skopeo with ``args``, confined while this store fetches for a principal."""
        if self._proxy is None:
            return SKOPEO, args
        argv = self._proxy.command(host_tools.command(SKOPEO, args))
        return Path(argv[0]), argv[1:]

    def _has(self, layer: dict[str, Any]) -> bool:
        digest = str(layer.get("digest"))
        return bool(_DIGEST.match(digest)) and self.blob(digest).exists()

    def _copy_with_progress(
        self, command: list[str], missing: list[tuple[str, int]] | None, progress: Progress
    ) -> subprocess.CompletedProcess[str]:
        """Run ``skopeo copy``, reporting each second the bytes written into the
        layout of the total to fetch, and each layer once it is whole."""
        start = _layout_bytes(self.layout)
        layers = missing or []
        total = sum(size for _, size in layers)
        finished: set[str] = set()

        def report_layers() -> None:
            for number, (digest, size) in enumerate(layers, 1):
                if (
                    digest in finished
                    or not _DIGEST.match(digest)
                    or not self.blob(digest).exists()
                ):
                    continue
                finished.add(digest)
                progress(
                    f"phase=fetch layer {number}/{len(layers)} {digest[:19]} "
                    f"{size / 2**20:.1f} MiB done"
                )

        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            process = host_tools.popen(
                *self._skopeo(command), stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True
            )
            deadline = time.monotonic() + PULL_TIMEOUT_SECONDS
            shown = -1
            while True:
                try:
                    process.wait(timeout=1)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        process.kill()
                        process.wait()
                        raise ImageError("fetching took longer than an hour") from None
                report_layers()
                fetched = max(0, _layout_bytes(self.layout) - start)
                if fetched != shown:
                    shown = fetched
                    of = f" of {total / 2**20:.1f}" if total else ""
                    count = f"layers {len(finished)} of {len(layers)} done, " if layers else ""
                    progress(f"phase=fetch {count}{fetched / 2**20:.1f}{of} MiB")
            if process.returncode == 0:
                report_layers()
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(command, process.returncode, out.read(), err.read())

    def _fetch_error(
        self, reference: Reference, stderr: str, insecure: bool, action: str = "fetching"
    ) -> ImageError:
        text = " ".join(stderr.split())
        detail = text[-600:]
        lowered = text.lower()
        if "unauthorized" in lowered or "authentication required" in lowered or "denied" in lowered:
            return ImageError(
                f"the registry refused {reference.text} (401/403): log in with "
                f"`skopeo login {reference.registry}` or put credentials in {AUTH_FILES}"
            )
        if "no image found in manifest list" in lowered or "choosing image instance" in lowered:
            platforms = self._platforms(reference, insecure)
            return ImageError(
                f"{reference.text} has no linux/amd64 image; it has: {platforms or 'unknown'}"
            )
        if "http response to https client" in lowered:
            return ImageError(
                f"{reference.registry} speaks plain HTTP; pyro allows that only on a loopback "
                "address or with --insecure-registry"
            )
        if "no space left on device" in lowered:
            return disk_full(self.layout)
        if "manifest unknown" in lowered or "not found" in lowered or "no such file" in lowered:
            return ImageError(f"{reference.text} was not found: {detail}")
        if "connection refused" in lowered or "no such host" in lowered or "timeout" in lowered:
            return ImageError(f"cannot reach the registry of {reference.text}: {detail}")
        return ImageError(f"{action} {reference.text} failed: {detail}")

    def _platforms(self, reference: Reference, insecure: bool) -> str:
        command = ["inspect", "--raw"]
        if reference.registry is not None:
            plain = insecure or bool(LOOPBACK.match(reference.registry))
            command.append(f"--tls-verify={'false' if plain else 'true'}")
        done = host_tools.run(
            *self._skopeo([*command, reference.source]), capture_output=True, timeout=60
        )
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            index = json.loads(done.stdout)
            found = [
                "/".join(
                    str(p)
                    for p in (m["platform"].get("os"), m["platform"].get("architecture"))
                    + ((m["platform"]["variant"],) if m["platform"].get("variant") else ())
                )
                for m in index.get("manifests", [])
                if isinstance(m.get("platform"), dict)
            ]
            return ", ".join(found)
        return ""

    def _read(self, tag: str) -> Image:
        index = _json_file(self.layout / "index.json", "the image layout's index")
        entries = [
            m
            for m in index.get("manifests", [])
            if isinstance(m, dict)
            and (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag
        ]
        if len(entries) != 1:
            raise ImageError("skopeo finished but the image is not in the layout's index")
        manifest_digest = str(entries[0].get("digest"))
        manifest = _json_file(self.blob(manifest_digest), "the image manifest")
        config_digest = str((manifest.get("config") or {}).get("digest"))
        config = _json_file(self.blob(config_digest), "the image config")
        if config.get("os", "linux") != "linux" or config.get("architecture") not in (
            "amd64",
            None,
        ):
            raise ImageError(
                f"the image is for {config.get('os')}/{config.get('architecture')}; "
                "pyro guests are linux/amd64"
            )
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        described = manifest.get("layers")
        if not isinstance(described, list) or len(described) != len(diff_ids):
            raise ImageError("the image's manifest and config disagree on its layers")
        layers = []
        chain = ""
        for item, diff_id in zip(described, diff_ids, strict=True):
            media = str(item.get("mediaType", ""))
            if media not in _LAYER_TYPES:
                raise ImageError(f"a layer of type {media[:80]!r} is not something pyro can apply")
            if not _DIGEST.match(str(diff_id)):
                raise ImageError("the image config names a layer by an unusable digest")
            chain = diff_id if not chain else _sha256_text(f"{chain} {diff_id}")
            layers.append(
                Layer(
                    digest=str(item.get("digest")),
                    size=int(item.get("size", -1)),
                    compression=_LAYER_TYPES[media],
                    diff_id=str(diff_id),
                    chain_id=chain,
                )
            )
        return Image(manifest_digest, config_digest, config, layers)

    def _untag(self, tag: str) -> None:
        """Drop the pull's tag from the index: the blobs stay, owned by environments."""
        path = self.layout / "index.json"
        with contextlib.suppress(OSError, ValueError):
            index = json.loads(path.read_text())
            index["manifests"] = [
                m
                for m in index.get("manifests", [])
                if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") != tag
            ]
            tmp = path.with_name(f".index-{uuid.uuid4().hex[:6]}.json")
            tmp.write_text(json.dumps(index))
            tmp.replace(path)

    # -------------------------------------------------------------- layers

    def examine(self, layer: Layer, unpacked_path: Path) -> None:
        """Check ``layer``'s digests and names; note its whiteouts and entries.

        The layer is decompressed here, natively and in large reads, into
        ``unpacked_path``: the guest that applies it then reads a plain tar
        (decompressing under emulation costs it several times more).
        """
        path = self.blob(layer.digest)
        if not path.is_file() or path.stat().st_size != layer.size:
            raise ImageError(f"layer {layer.digest[:19]} is missing or has the wrong size")
        if "sha256:" + builder.sha256_file(path) != layer.digest:
            path.unlink(missing_ok=True)  # the next pull fetches it afresh
            raise ImageError(
                f"layer {layer.digest[:19]} does not match its digest; it was removed from "
                "the cache, pull again to fetch it afresh"
            )
        try:
            if layer.compression == "zstd":
                host_tools.run(ZSTD, ["-q", "-d", "-f", path, "-o", unpacked_path])
                digest, total = _hash_file(unpacked_path)
            else:
                digest, total = _unpack(path, unpacked_path, layer.compression == "gzip")
            if "sha256:" + digest != layer.diff_id:
                raise ImageError(
                    f"layer {layer.digest[:19]} unpacks to other content than the config says"
                )
            with tarfile.open(unpacked_path, "r:") as tar:
                for member in tar:
                    self._note(layer, member)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise disk_full(unpacked_path.parent) from exc
            raise ImageError(f"layer {layer.digest[:19]} could not be read: {exc}") from exc
        except (tarfile.TarError, EOFError, gzip.BadGzipFile) as exc:
            raise ImageError(f"layer {layer.digest[:19]} is not a readable tar: {exc}") from exc
        layer.unpacked_bytes = total

    def _note(self, layer: Layer, member: tarfile.TarInfo) -> None:
        name = _inside_root(member.name)
        if name is None:
            return  # the root itself
        base = PurePosixPath(name)
        if base.name == ".wh..wh..opq":
            if str(base.parent) != ".":
                layer.opaque.append(str(base.parent))
            return
        if base.name.startswith(".wh."):
            layer.remove.append(str(base.parent / base.name.removeprefix(".wh.")))
            return
        if member.islnk() and _inside_root(member.linkname) is None:
            raise ImageError(f"hard link {member.name!r} points outside the image root")
        layer.entries.append((name, member.isdir()))


def settle_conflicts(layers: list[Layer]) -> None:
    """Set each layer's ``conflicts`` for ``layers`` applied in order on an empty disk.

    The host has every entry of every layer (``examine``), so it can tell which
    entries replace something of the other type below (a file where a directory
    was, or the reverse) instead of the guest looking at each path under
    emulation: a layer of 20,000 files then costs the guest no checks at all.
    The walk honours each layer's whiteouts and opaque directories first, as
    the guest does.
    """
    tree: dict[str, bool] = {}

    def drop(path: str, *, itself: bool) -> None:
        if itself:
            tree.pop(path, None)
        prefix = path + "/"
        for key in [key for key in tree if key.startswith(prefix)]:
            del tree[key]

    for layer in layers:
        for path in layer.remove:
            drop(path, itself=True)
        for path in layer.opaque:
            drop(path, itself=False)
        conflicts: list[tuple[str, bool]] = []
        for path, is_dir in layer.entries:
            below = tree.get(path)
            if below is not None and below != is_dir:
                conflicts.append((path, is_dir))
                drop(path, itself=True)
            tree[path] = is_dir
        layer.conflicts = conflicts


# ------------------------------------------------------------------ helpers


def _layout_bytes(layout: Path) -> int:
    """Bytes in the layout's blobs and skopeo's files being written."""
    total = 0
    for folder in (layout, layout / "blobs" / "sha256"):
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
    return total


def _skopeo(args: list[str]) -> subprocess.CompletedProcess[str]:
    return host_tools.run(
        SKOPEO, args, stdin=subprocess.DEVNULL, capture_output=True, timeout=PULL_TIMEOUT_SECONDS
    )


def _unpack(source: Path, target: Path, gzipped: bool) -> tuple[str, int]:
    """Copy ``source`` to ``target``, gunzipped if ``gzipped``; the copy's sha256 and size."""
    digest = hashlib.sha256()
    total = 0
    opener: Any = gzip.open if gzipped else open
    with opener(source, "rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            total += len(chunk)
            writer.write(chunk)
    return digest.hexdigest(), total


def _hash_file(path: Path) -> tuple[str, int]:
    return builder.sha256_file(path), path.stat().st_size


def _inside_root(name: str) -> str | None:
    """A member name relative to the image root; None for the root itself.

    Raises:
        ImageError: the name climbs out of the root.
    """
    parts: list[str] = []
    for part in PurePosixPath(name.lstrip("/")).parts:
        if part == "..":
            raise ImageError(f"layer member {name[:200]!r} climbs out of the image root")
        if part not in (".", ""):
            parts.append(part)
    return "/".join(parts) if parts else None


def _json_file(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"{what} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise ImageError(f"{what} is not a JSON object")
    return data


def _sha256_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def image_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What pyro honours of an image's config: Env, User, WorkingDir; and what it shows."""
    inner = config.get("config") or {}
    env: dict[str, str] = {}
    for item in inner.get("Env") or []:
        if isinstance(item, str) and "=" in item:
            key, value = item.split("=", 1)
            if key and "\0" not in item:
                env[key] = value
    return {
        "env": env,
        "user": str(inner.get("User") or ""),
        "working_dir": str(inner.get("WorkingDir") or ""),
        "entrypoint": inner.get("Entrypoint") or None,
        "cmd": inner.get("Cmd") or None,
        "labels": inner.get("Labels") or {},
    }


LOW_SPACE_BYTES = 64 * 2**20


def _refused_fetch(reference: Reference, refusal: dict[str, Any]) -> ImageError:
    where = f"{refusal.get('host')}:{refusal.get('port')}"
    return ImageError(
        f"fetching {reference.text} led to {where}, which this server does not let a "
        f"registry reach ({refusal.get('reason', '')[:200].split(';')[0]}): registries "
        "may reach only public addresses, checked at each connection, including "
        "redirects. An admin can grant private registries: pyro server token create "
        "NAME --allow private-registry"
    )


def disk_full(path: Path) -> ImageError:
    """The error for a pull that ran out of room where it writes (``path``)."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        free = 0
    return ImageError(
        f"the disk holding {path} is full ({free // 2**20} MiB free): nothing was installed. "
        "Free space there (`pyro env prune` removes layers and blobs no environment uses), "
        "or point PYRO_CACHE_DIR at a larger disk, and pull again"
    )


def low_on_space(path: Path) -> bool:
    try:
        return shutil.disk_usage(path).free < LOW_SPACE_BYTES
    except OSError:
        return False


EMPTY_BASE = "empty.ext4"


def empty_base(layers_dir: Path, size_mib: int) -> Path:
    """A sparse empty ext4 of ``size_mib``: the bottom of every chain of that size."""
    base = layers_dir / f"{size_mib}M" / EMPTY_BASE
    if base.is_file():
        return base
    base.parent.mkdir(parents=True, exist_ok=True)
    partial = base.with_name(f".empty-{uuid.uuid4().hex[:6]}.ext4")
    builder._run(
        host_tools.MKFS_EXT4,
        ["-q", "-F", "-L", "pyro-root", "-E", "root_owner=0:0", partial, f"{size_mib}M"],
        what="mkfs.ext4 (image root)",
    )
    os.chmod(partial, 0o444)
    os.replace(partial, base)
    return base


def chain_disk(layers_dir: Path, size_mib: int, chain_id: str) -> Path:
    return layers_dir / f"{size_mib}M" / f"{chain_id.removeprefix('sha256:')}.qcow2"


# Each layer of a raw blobs drive starts on this boundary, after at least
# RAW_GAP zero bytes (a hole): a tar reading past its own end meets zero
# blocks, tar's end-of-archive mark, never the next layer. The guest takes the
# drive for larger than it is (the warm building guest's stand-in), and a read
# past the file's real end is an I/O error: tar reads whole 128 KiB records and
# the kernel reads ahead, so the drive ends RAW_TAIL after the last layer.
RAW_ALIGN = 4096
RAW_GAP = 1024 * 1024
RAW_TAIL = 8 * 1024 * 1024


def blobs_raw(unpacked: Path, layers: list[Layer]) -> tuple[Path, dict[str, tuple[int, int]]]:
    """The layers (plain tars named by digest, in ``unpacked``) as one raw drive for
    the building guest, which reads each at its offset; and each layer's
    ``(offset, size)``. The first layer's file becomes the drive (no copy); the
    others are appended in the kernel (``copy_file_range``), never through an
    ext4 image (``mkfs.ext4 -d`` of a 233 MiB layer took 8 s here)."""
    first = unpacked / layers[0].hex
    drive = unpacked / "blobs.raw"
    os.replace(first, drive)
    places: dict[str, tuple[int, int]] = {}
    with drive.open("r+b") as sink:
        end = 0
        for number, layer in enumerate(layers):
            if layer.hex in places:  # the same layer twice: one copy serves both
                continue
            source = drive if number == 0 else unpacked / layer.hex
            size = source.stat().st_size if number else os.fstat(sink.fileno()).st_size
            offset = 0 if number == 0 else -(-(end + RAW_GAP) // RAW_ALIGN) * RAW_ALIGN
            if number:
                with source.open("rb") as reader:
                    copied = 0
                    while copied < size:
                        done = os.copy_file_range(
                            reader.fileno(), sink.fileno(), size - copied, copied, offset + copied
                        )
                        if done == 0:
                            raise ImageError(f"layer {layer.digest[:19]} ended early")
                        copied += done
                source.unlink()
            places[layer.hex] = (offset, size)
            end = offset + size
        sink.truncate(-(-(end + RAW_TAIL) // RAW_ALIGN) * RAW_ALIGN)
    return drive, places


# ------------------------------------------------------------------ pushing


def destination(text: str, *, insecure: bool = False) -> tuple[str, list[str]]:
    """A push destination as skopeo takes it, and its TLS flags.

    Raises:
        InvalidArgument: not a registry reference, ``oci:`` or ``oci-archive:``.
    """
    if text.startswith(("oci:", "oci-archive:")):
        prefix, _, rest = text.partition(":")
        path, _, tag = rest.partition(":") if prefix == "oci" else (rest, "", "")
        local = Path(path).expanduser().absolute()
        if not local.parent.is_dir():
            raise InvalidArgument("reference", f"the directory {local.parent} does not exist")
        return f"{prefix}:{local}" + (f":{tag}" if tag else ""), []
    if text.startswith("docker-archive:"):
        return text, []
    remote = text.removeprefix("docker://")
    first = remote.split("/", 1)[0]
    if "/" not in remote or not ("." in first or ":" in first or first == "localhost"):
        raise InvalidArgument(
            "reference",
            f"{text!r} is not a push destination: use HOST/PATH:TAG, docker://..., "
            "oci:PATH[:TAG] or oci-archive:FILE",
        )
    plain = insecure or bool(LOOPBACK.match(first))
    return f"docker://{remote}", [f"--dest-tls-verify={'false' if plain else 'true'}"]


def write_blob(store: ImageStore, data: bytes) -> str:
    """Store ``data`` in the layout by its digest; return the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = store.blob(digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
        tmp.write_bytes(data)
        tmp.replace(path)
    return digest


def store_file_blob(store: ImageStore, source: Path) -> tuple[str, int]:
    """Move ``source`` into the layout by its digest; return the digest and size."""
    digest = "sha256:" + builder.sha256_file(source)
    size = source.stat().st_size
    path = store.blob(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        source.unlink()
    else:
        os.replace(source, path)
    return digest, size


def push(
    store: ImageStore,
    manifest_digest: str,
    target: str,
    progress: Progress,
    *,
    insecure: bool = False,
) -> str:
    """Copy the image whose manifest is ``manifest_digest`` to ``target``, digests
    kept; return the manifest digest at the destination."""
    dest, flags = destination(target, insecure=insecure)
    manifest_path = store.blob(manifest_digest)
    if not manifest_path.is_file():
        raise ImageError(
            f"the image's manifest {manifest_digest[:19]} is no longer in the cache; "
            "pull the environment again"
        )
    media = str(
        _json_file(manifest_path, "the image manifest").get("mediaType")
        or "application/vnd.oci.image.manifest.v1+json"
    )
    tag = f"pyro-push-{uuid.uuid4().hex[:12]}"
    progress(f"phase=push {target}")
    with store.locked():
        index_path = store.layout / "index.json"
        index = _json_file(index_path, "the image layout's index") if index_path.exists() else {}
        index.setdefault("schemaVersion", 2)
        index.setdefault("manifests", []).append(
            {
                "mediaType": media,
                "digest": manifest_digest,
                "size": manifest_path.stat().st_size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
        layout_file = store.layout / "oci-layout"
        if not layout_file.exists():
            layout_file.write_text('{"imageLayoutVersion":"1.0.0"}')
        tmp = index_path.with_name(f".index-{uuid.uuid4().hex[:6]}.json")
        tmp.write_text(json.dumps(index))
        tmp.replace(index_path)
        try:
            command = ["copy", "--preserve-digests", *flags, f"oci:{store.layout}:{tag}", dest]
            done = _skopeo(command)
        finally:
            store._untag(tag)
    if done.returncode != 0:
        reference = Reference(target, dest, "", dest.removeprefix("docker://").split("/")[0])
        raise store._fetch_error(reference, done.stderr, insecure, "pushing to")
    return manifest_digest
