"""``pyro env build``: an environment from a Dockerfile, built inside a guest.

The building guest is the one that applies image layers (``image_builder``):
it boots from the runtime drive, and the root filesystem being built is its
/workspace drive, a qcow2 over the ``FROM`` environment's root disk. ``RUN``
steps run chrooted into it (``guest/build.py``), with a NIC only when the
flags allow hosts, through the same egress proxy as a workspace. ``COPY``
and ``ADD`` bring tar files the host made from the build context (checked,
``.dockerignore`` honoured) on the read-only baseline drive.

Each step that changes the disk gets a disk of its own, as each image layer
does, named by its cache key: the parent's key, the instruction, the
environment, user and working directory it runs with, and for a copy the
hashes of what it copies. After a step the guest freezes the disk and QEMU
moves the drive onto the next step's disk. A rebuild starts from the longest
prefix of steps already on disk, so editing the last line runs only that
line. A step's disk counts once its record is written, which happens once a
later step has moved off it or the build ended; a failed step leaves the
steps before it cached and nothing installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pyro_mcp import host_tools
from pyro_mcp.agent import operations as guest
from pyro_mcp.agent.client import SupervisorClient
from pyro_mcp.egress.config import EgressConfig
from pyro_mcp.environments import builder, dockerfile, images
from pyro_mcp.environments.cache import EnvironmentCache, InstalledEnvironment
from pyro_mcp.environments.catalog import CATALOG, get_spec
from pyro_mcp.errors import EnvironmentBuildError, InvalidArgument, NotFound
from pyro_mcp.vm import control_ops, disks, image_builder

# POSIX file locks: the engine's. A remote client on Windows imports this module
# (through the SDK) but never takes one.
with contextlib.suppress(ImportError):
    import fcntl

STEP_TIMEOUT_SECONDS = 1800
OUTPUT_TAIL_CHARS = 3000
POLL_WAIT_MS = 2000
Pull = Callable[[str], InstalledEnvironment]


@dataclass
class _Base:
    """Where the first step's disk goes: over ``top``, in ``folder``."""

    top: Path
    chain: list[Path]
    size_mib: int
    identity: str
    settings: dict[str, Any]


@dataclass
class _Planned:
    number: int
    step: dockerfile.Step
    key: str = ""  # disk steps only
    copy: _Copy | None = None
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = "/"


@dataclass
class _Copy:
    archive: Path
    digest: str
    entries: list[list[Any]]
    chown: str | None
    file_dest: tuple[str, str] | None = None  # one file to a path that may be a directory


def build_environment(
    cache: EnvironmentCache,
    *,
    vms_dir: Path,
    accel_name: str,
    name: str,
    file: Path,
    context: Path,
    build_args: dict[str, str],
    egress: EgressConfig | None,
    no_cache: bool,
    step_timeout_seconds: int,
    pull: Pull,
    progress: images.Progress,
    setup: image_builder.GuestSetup | None = None,
    namespace: str = "",
) -> InstalledEnvironment:
    """Build ``file`` in ``context`` as environment ``name``; installed only if
    every step succeeds (a previous ``name`` stays until then). ``RUN`` steps
    reach the network through ``egress`` (None: no network). A ``FROM`` names
    the ``namespace``'s own environment before a shared one (pyro server)."""
    env_name = images.check_name(name)
    if env_name in CATALOG:
        raise InvalidArgument("name", f"{env_name} is a curated environment; name the build")
    if not context.is_dir():
        raise InvalidArgument("context", f"{context} is not a directory")
    if not 10 <= step_timeout_seconds <= 24 * 3600:
        raise InvalidArgument("step_timeout_seconds", "must be from 10 s to a day")
    context = context.resolve()
    parsed = dockerfile.parse(file, build_args)
    for unused in parsed.unused_build_args:
        progress(f"phase=build warning: --build-arg {unused} names no ARG in {file}")
    progress(f"phase=build FROM {parsed.base}")
    base = _base(cache, parsed.base, pull, progress, namespace)
    kernel, runtime_image, initrd = image_builder.builder_parts(cache, progress)
    started = time.monotonic()
    layers_dir = images.ImageStore(cache.cache_dir).layers_dir
    folder = layers_dir / f"{base.size_mib}M"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyro-build-", dir=folder) as tmp:
        work = Path(tmp)
        plan, settings = _plan(parsed, base, context, work)
        disk_steps = [item for item in plan if item.key]
        with (folder / ".build.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build or pull at a time on these disks
            image_builder.sweep(folder, progress)
            done = 0
            if not no_cache:
                while done < len(disk_steps) and image_builder.built(
                    folder / f"{disk_steps[done].key}.qcow2"
                ):
                    done += 1
            todo = disk_steps[done:]
            total = len(plan)
            first_run = todo[0].number if todo else total + 1
            for item in plan:
                if item.number < first_run:
                    note = " (cached)" if item.key else ""
                    progress(f"step {item.number}/{total}: {item.step.text}{note}")
            if todo:
                below = folder / f"{disk_steps[done - 1].key}.qcow2" if done else base.top
                _run_steps(
                    plan,
                    todo,
                    below=below,
                    base=base,
                    folder=folder,
                    work=work,
                    egress=egress,
                    setup=setup,
                    boot=(vms_dir, accel_name, kernel.vmlinuz, initrd, runtime_image),
                    warm_from=(cache.cache_dir, kernel.version),
                    timeout=step_timeout_seconds,
                    progress=progress,
                )
                for item in plan:
                    if item.number > todo[-1].number:
                        progress(f"step {item.number}/{total}: {item.step.text}")
            top = folder / f"{disk_steps[-1].key}.qcow2" if disk_steps else _settled(base, folder)
            chain = image_builder.chain_of(top)
    seconds = round(time.monotonic() - started, 1)
    info: dict[str, Any] = {
        "reference": f"dockerfile:{file.resolve()}",
        "source": str(file.resolve()),
        "manifest_digest": None,
        "config_digest": None,
        "disk_size_mib": base.size_mib,
        "layers": [],
        "settings": settings,
        "built_from": parsed.base,
        "build_seconds": seconds,
    }
    installed = cache.install_image(
        env_name,
        kernel=kernel,
        runtime=runtime_image,
        chain=chain,
        image=info,
        progress=progress,
    )
    progress(f"phase=done {env_name} built from {file} in {seconds} s")
    return installed


def save_environment(
    cache: EnvironmentCache,
    *,
    name: str,
    environment: str,
    source: str,
    save_root: Callable[[Path, Path], dict[str, Any]],
    progress: images.Progress,
) -> tuple[InstalledEnvironment, dict[str, Any]]:
    """Install ``name`` from a workspace's root disk: ``save_root(out, base)``
    writes it as a qcow2 over the root disk of ``environment`` (what the
    workspace started from), which the saved environment shares."""
    env_name = images.check_name(name)
    if env_name in CATALOG:
        raise InvalidArgument("name", f"{env_name} is a curated environment; name it otherwise")

    def missing(reference: str) -> InstalledEnvironment:
        raise NotFound(
            f"the workspace's environment {reference} is no longer installed; "
            f"`pyro env pull {reference}` it again, then save"
        )

    base = _base(cache, environment, missing, progress)
    kernel, runtime_image, _ = image_builder.builder_parts(cache, progress)
    folder = images.ImageStore(cache.cache_dir).layers_dir / f"{base.size_mib}M"
    started = time.monotonic()
    with (folder / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        image_builder.sweep(folder, progress)
        out = folder / f"{uuid.uuid4().hex}{uuid.uuid4().hex}.qcow2"
        progress(f"phase=save copying the root disk of {source} (what differs from {environment})")
        try:
            saved = save_root(out, base.top)
            os.chmod(out, 0o444)
            image_builder.write_record(out, base.top if base.chain else None, 0)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        chain = image_builder.chain_of(out)
    info: dict[str, Any] = {
        "reference": source,
        "source": source,
        "manifest_digest": None,
        "config_digest": None,
        "disk_size_mib": base.size_mib,
        "layers": [],
        "settings": base.settings,
        "saved_from": {"workspace": source, "environment": environment},
    }
    installed = cache.install_image(
        env_name, kernel=kernel, runtime=runtime_image, chain=chain, image=info, progress=progress
    )
    seconds = round(time.monotonic() - started, 1)
    progress(f"phase=done {env_name} saved from {source} in {seconds} s")
    return installed, {**saved, "save_seconds": seconds}


def _base(
    cache: EnvironmentCache,
    reference: str,
    pull: Pull,
    progress: images.Progress,
    namespace: str = "",
) -> _Base:
    """The ``FROM`` environment: installed (the ``namespace``'s own first, as a
    name the caller uses resolves on pyro server), built (curated) or pulled first."""
    status = None
    for name in [namespace + reference, reference] if namespace else [reference]:
        try:
            status = cache.status(name)
        except (NotFound, InvalidArgument):  # not installed, or not a name: pulled below
            continue
        if status.installed:
            break
    if status is None or not status.installed:
        if reference in CATALOG:
            cache.ensure(reference, progress)
            status = cache.status(reference)
        else:
            progress(f"phase=build {reference} is not installed: pulling it")
            status = cache.status(pull(reference).name)
    manifest = status.manifest or {}
    if manifest.get("chain"):
        image = manifest.get("image") or {}
        chain = [Path(path) for path in manifest["chain"]]
        return _Base(
            top=chain[-1],
            chain=chain,
            size_mib=int(image.get("disk_size_mib") or 8192),
            identity=f"layers:{chain[-1].name}",
            settings=dict(image.get("settings") or {}),
        )
    assert status.build_dir is not None
    sha = str(((manifest.get("files") or {}).get("rootfs.ext4") or {}).get("sha256") or "")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise EnvironmentBuildError(f"{reference}'s manifest names no root disk hash")
    size = get_spec(reference).disk_size_mib
    folder = images.ImageStore(cache.cache_dir).layers_dir / f"{size}M"
    folder.mkdir(parents=True, exist_ok=True)
    disk = folder / f"base-{sha[:32]}.ext4"
    if not disk.is_file():
        partial = folder / f".base-{os.getpid()}.ext4"
        partial.unlink(missing_ok=True)
        try:
            os.link(status.build_dir / "rootfs.ext4", partial)  # shares the blocks
        except OSError:
            # another filesystem: a sparse copy
            copied = host_tools.run(
                host_tools.QEMU_IMG,
                ["convert", "-O", "raw", status.build_dir / "rootfs.ext4", partial],
                capture_output=True,
            )
            if copied.returncode != 0:
                raise EnvironmentBuildError(
                    f"cannot copy {reference}'s root disk: {copied.stderr}"
                ) from None
        os.replace(partial, disk)
    return _Base(top=disk, chain=[], size_mib=size, identity=f"curated:{sha}", settings={})


def _settled(base: _Base, folder: Path) -> Path:
    """A Dockerfile with no step that writes: the base's own top, or for a
    curated base one empty disk over it (an environment's root is a qcow2)."""
    if base.chain:
        return base.top
    disk = folder / f"{hashlib.sha256(base.identity.encode()).hexdigest()}.qcow2"
    if not image_builder.built(disk):
        disk.unlink(missing_ok=True)
        disks.create_overlay(base.top, disk)
        os.chmod(disk, 0o444)
        image_builder.write_record(disk, None, 0)
    return disk


# ------------------------------------------------------------------ planning


def _plan(
    parsed: dockerfile.Dockerfile, base: _Base, context: Path, work: Path
) -> tuple[list[_Planned], dict[str, Any]]:
    """Every step with what it runs with, and each disk step's cache key; the
    resulting image settings."""
    settings: dict[str, Any] = {
        "env": dict(base.settings.get("env") or {}),
        "user": str(base.settings.get("user") or ""),
        "working_dir": str(base.settings.get("working_dir") or ""),
        "entrypoint": base.settings.get("entrypoint"),
        "cmd": base.settings.get("cmd"),
        "labels": dict(base.settings.get("labels") or {}),
        "exposed_ports": list(base.settings.get("exposed_ports") or []),
    }
    ignore = _ignore_patterns(context)
    key = hashlib.sha256(base.identity.encode()).hexdigest()
    plan: list[_Planned] = []
    for number, step in enumerate(parsed.steps, 1):
        item = _Planned(number, step)
        args = step.args
        if step.instruction == "ENV":
            settings["env"].update(args["env"])
        elif step.instruction == "WORKDIR":
            settings["working_dir"] = str(
                PurePosixPath(settings["working_dir"] or "/") / args["path"]
            )
        elif step.instruction == "USER":
            settings["user"] = args["user"]
        elif step.instruction == "LABEL":
            settings["labels"].update(args["labels"])
        elif step.instruction == "EXPOSE":
            settings["exposed_ports"] += args["ports"]
        elif step.instruction == "ENTRYPOINT":
            settings["entrypoint"] = args["argv"]
        elif step.instruction == "CMD":
            settings["cmd"] = args["argv"]
        item.env = {**args.get("scope_args", {}), **settings["env"]}
        item.user = settings["user"]
        item.workdir = settings["working_dir"] or "/"
        if step.changes_disk:
            what: Any = args.get("argv")
            if step.instruction in ("COPY", "ADD"):
                item.copy = _copy_archive(parsed.path, step, context, ignore, item.workdir, work)
                what = {"copy": item.copy.digest, "chown": item.copy.chown}
            material = [key, step.instruction, what, item.env, item.user, item.workdir]
            key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
            item.key = key
        plan.append(item)
    return plan, settings


def _ignore_patterns(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """``.dockerignore``: (excluding, pattern) pairs; the last match wins."""
    try:
        lines = (context / ".dockerignore").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    patterns = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        negate = text.startswith("!")
        text = os.path.normpath(text.lstrip("!").strip()).lstrip("/")
        if text in (".", ""):
            continue
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?)", text):
            if part.startswith("**"):
                regex += ".*"
            elif part == "*":
                regex += "[^/]*"
            elif part == "?":
                regex += "[^/]"
            else:
                regex += re.escape(part)
        patterns.append((not negate, re.compile(f"^{regex}(/.*)?$")))
    return patterns


def _ignored(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    verdict = False
    for excluding, pattern in patterns:
        if pattern.match(relative):
            verdict = excluding
    return verdict


def _copy_archive(
    path: Path,
    step: dockerfile.Step,
    context: Path,
    ignore: list[tuple[bool, re.Pattern[str]]],
    workdir: str,
    work: Path,
) -> _Copy:
    """The tar a COPY/ADD extracts, members named where they go, and its content hash."""
    args = step.args
    written = args["dest"]
    dest = PurePosixPath(os.path.normpath(PurePosixPath(workdir) / written))
    into_dir = written.endswith(("/", "/.")) or written in (".", "..") or len(args["sources"]) > 1
    members: list[tuple[str, Path]] = []
    file_dest: tuple[str, str] | None = None

    def refuse(message: str) -> EnvironmentBuildError:
        return EnvironmentBuildError(f"{path}:{step.line}: {step.instruction} {message}")

    for source in args["sources"]:
        relative = os.path.normpath(source.lstrip("/"))
        if relative == ".." or relative.startswith("../"):
            raise refuse(f"source {source} is outside the build context {context}")
        full = context / relative if relative != "." else context
        real = full.resolve()
        if real != context and context not in real.parents:
            raise refuse(f"source {source} leads outside the build context {context} (a link)")
        if not full.exists():
            raise refuse(f"source {source} is not in the build context {context}")
        if relative != "." and _ignored(relative, ignore):
            raise refuse(f"source {source} is excluded by .dockerignore")
        if real.is_dir():
            target = dest
            if str(dest) != "/":
                members.append((str(dest), real))  # made (and --chown'd) as Docker does
            for root, dirs, files in os.walk(real):
                here = Path(root)
                for entry in sorted([*dirs, *files]):
                    item = here / entry
                    inner = item.relative_to(real).as_posix()
                    in_context = item.relative_to(context).as_posix()
                    if _ignored(in_context, ignore):
                        if entry in dirs:
                            dirs.remove(entry)
                        continue
                    members.append((str(target / inner), item))
                dirs.sort()
        else:
            target = dest / real.name if into_dir else dest
            members.append((str(target), real))
            if not into_dir:
                file_dest = (str(dest).lstrip("/"), real.name)
    digest = hashlib.sha256()
    archive = work / f"copy-{step.line}.tar"
    entries: list[list[Any]] = []
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, item in members:
            info = tar.gettarinfo(str(item), arcname=name.lstrip("/"))
            if not (info.isfile() or info.isdir() or info.issym()):
                continue  # sockets, devices, fifos stay out
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if args.get("chmod") is not None:
                info.mode = args["chmod"]
            digest.update(
                json.dumps([info.name, info.type.decode(), info.mode, info.linkname]).encode()
            )
            if info.isfile():
                data = item.read_bytes()
                digest.update(hashlib.sha256(data).digest())
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
            entries.append([info.name, info.isdir()])
    hexdigest = digest.hexdigest()
    named = work / hexdigest
    os.replace(archive, named)
    return _Copy(named, hexdigest, entries, args.get("chown"), file_dest)


# ------------------------------------------------------------------- running


def _run_steps(
    plan: list[_Planned],
    todo: list[_Planned],
    *,
    below: Path,
    base: _Base,
    folder: Path,
    work: Path,
    egress: EgressConfig | None,
    setup: image_builder.GuestSetup | None,
    boot: tuple[Path, str, Path, Path, Path],
    timeout: int,
    progress: images.Progress,
    warm_from: tuple[Path, str] | None = None,
) -> None:
    """Run the disk steps in ``todo`` (and the settings steps between them) in one guest."""
    vms_dir, accel_name, kernel, initrd, runtime_image = boot
    blobs_dir = work / "blobs"
    blobs_dir.mkdir()
    for item in todo:
        if item.copy is not None:
            os.replace(item.copy.archive, blobs_dir / item.copy.digest)
            item.copy.archive = blobs_dir / item.copy.digest
    size = sum(path.stat().st_size for path in blobs_dir.iterdir()) * 11 // 10 // 2**20 + 16
    blobs = work / "blobs.ext4"
    builder._run(
        host_tools.MKFS_EXT4, ["-q", "-F", "-d", blobs_dir, blobs, f"{size}M"], what="mkfs.ext4"
    )
    targets = [folder / f"{item.key}.qcow2" for item in todo]
    for target in targets:
        target.unlink(missing_ok=True)  # an unrecorded leftover of a --no-cache rebuild
    made: list[Path] = []
    first = todo[0].number
    total = len(plan)
    parent: Path | None = below if below != base.top or base.chain else None
    try:
        disks.create_overlay(below, targets[0])
        made.append(targets[0])
        progress(f"phase=build starting a guest for steps {first} to {todo[-1].number}")
        with image_builder.builder_guest(
            vms_dir,
            accel_name,
            kernel,
            initrd,
            runtime_image,
            targets[0],
            blobs,
            egress,
            setup,
            warm_from=warm_from,
            progress=progress,
        ) as client:
            for item in plan:
                if item.number < first or item.number > todo[-1].number:
                    continue
                progress(f"step {item.number}/{total}: {item.step.text}")
                if not item.key:
                    continue
                target = folder / f"{item.key}.qcow2"
                if made[-1] != target:
                    guest.freeze(client, True)
                    disks.create_overlay(made[-1], target)
                    control_ops.split(client, [[str(made[-1]), str(target)]])
                    guest.freeze(client, False)
                    os.chmod(made[-1], 0o444)
                    # The step below is whole and the guest writes on: record it.
                    image_builder.write_record(made[-1], parent, 0)
                    parent = made[-1]
                    made.append(target)
                if item.copy is not None:
                    guest.build_copy(
                        client,
                        {
                            "blob": item.copy.digest,
                            "entries": item.copy.entries,
                            "chown": item.copy.chown,
                            "file_dest": item.copy.file_dest[0] if item.copy.file_dest else None,
                            "file_name": item.copy.file_dest[1] if item.copy.file_dest else None,
                        },
                    )
                else:
                    _run(client, item, total, timeout, progress)
        os.chmod(made[-1], 0o444)
        image_builder.write_record(made[-1], parent, 0)
    except BaseException:
        for target in made:
            if not image_builder.built(target):
                target.unlink(missing_ok=True)
        raise


def _run(
    client: SupervisorClient,
    item: _Planned,
    total: int,
    timeout: int,
    progress: images.Progress,
) -> None:
    """One RUN step, its output streamed line by line; EnvironmentBuildError if
    it fails or outlasts ``timeout``."""
    step = item.step
    started = guest.build_run(
        client,
        {"argv": step.args["argv"], "env": item.env, "user": item.user, "workdir": item.workdir},
    )
    step_id = str(started["step"])
    offset, pending, tail = 0, "", ""
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise EnvironmentBuildError(
                f"step {item.number} ({step.text}, line {step.line}) ran longer than {timeout} s "
                "and was stopped with its guest; nothing of it is kept. Raise --step-timeout "
                f"if it needs longer. Its last output:\n{tail[-OUTPUT_TAIL_CHARS:]}"
            )
        polled = guest.build_poll(client, step_id, offset, POLL_WAIT_MS)
        text = str(polled.get("output") or "")
        next_offset = polled.get("next")
        if not isinstance(next_offset, int) or next_offset < offset:
            raise EnvironmentBuildError("the building guest answered a bad output offset")
        offset = next_offset
        pending += text
        tail = (tail + text)[-OUTPUT_TAIL_CHARS * 2 :]
        *lines, pending = pending.split("\n")
        for line in lines:
            progress(f"step {item.number}/{total}: | {line[:2000]}")
        code = polled.get("exit_code")
        if code is None:
            continue
        if pending:
            progress(f"step {item.number}/{total}: | {pending[:2000]}")
        if not isinstance(code, int):
            raise EnvironmentBuildError("the building guest answered a bad exit code")
        if code != 0:
            raise EnvironmentBuildError(
                f"step {item.number} failed: line {step.line} `{step.text}` exited {code}; "
                f"nothing was installed (the steps before it are cached). Its last output:\n"
                f"{tail[-OUTPUT_TAIL_CHARS:]}"
            )
        return
