"""One principal's view of the engine: the transport behind its SDK calls and
its MCP tools on ``pyro server``.

Every call passes here before the engine sees it:

- A workspace or VM argument must name one this principal created; any other
  gets the ``NotFound`` an id that never existed gets (an admin sees all).
  Lists hold only the principal's own.
- Creating, starting and forking count against the token's limits.
- What crosses from the client is what the SDK method's signature declares
  (``pyro_mcp.crossings``): seeds, sync sources, build contexts and local
  images arrive as uploads (``{"upload": TICKET}``), exports leave as
  downloads, secret files as values. A path string is refused, and so is any
  argument whose type could name a path but that declares no crossing, so no
  caller makes the server read or write its own files.
- Operator switches (``allow_private_egress``...) and registries on private
  addresses need an admin token or one granted the capability.
- Operations on the whole machine (pruning the cache, reaping) are the admin's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyro_mcp import config, crossings, names
from pyro_mcp.crossings import Capability, Crossing, Names
from pyro_mcp.egress.policy import EgressPolicy, is_public
from pyro_mcp.environments import images
from pyro_mcp.environments.cache import used_bytes
from pyro_mcp.environments.catalog import CATALOG
from pyro_mcp.errors import InvalidArgument, NotFound, PyroError, QuotaExceeded
from pyro_mcp.sdk import Pyro, routed_methods
from pyro_mcp.server.audit import AuditLog
from pyro_mcp.server.registry import Principal, Registry
from pyro_mcp.transport import wire
from pyro_mcp.workspaces.seed import stage_seed

ADMIN_ONLY = frozenset({"push_environment", "reap_expired", "suspend_idle_workspaces"})
# A non-admin principal's environments are stored as "u-HASH.NAME" (HASH: the
# first 8 hex of its name's SHA-256); names of that form are the server's.
OWNED_ENVIRONMENT = re.compile(r"u-[0-9a-f]{8}\.")
_STARTS = frozenset({"create_workspace", "start_workspace", "fork_workspace"})
# Calls whose `name` argument names a workspace (per principal, see _name_in).
_NAMES_WORKSPACES = frozenset({"create_workspace", "fork_workspace", "update_workspace"})
_LIVE = ("running", "suspended")

# The engine reports progress through one callback per Pyro; each server
# thread points it at the call it is running.
_current = threading.local()


def report_progress(line: str) -> None:
    sink = getattr(_current, "progress", None)
    if sink is not None:
        sink(line)


class PrincipalCalls:
    """The transport of one principal: ``call(method, arguments, progress)``."""

    def __init__(
        self,
        engine: Pyro,
        registry: Registry,
        principal: Principal,
        spool: Path,
        audit: AuditLog | None = None,
    ):
        self.engine = engine
        self.registry = registry
        self.principal = principal
        self.spool = spool
        self.audit = audit
        if not principal.admin:
            # What the engine installs on its own (a project's environment) is the
            # principal's, like what it names.
            engine._environment_namespace = self._env_prefix
        self._methods = set(routed_methods(type(engine)))
        # Quota checks and the creation they guard happen one at a time per
        # principal, so two creates at once cannot both pass a limit of one.
        self._admission = threading.Lock()

    def call(self, method: str, arguments: dict[str, Any], progress: Callable[[str], None]) -> Any:
        """Run ``method`` for this principal; one audit line records it (a server
        that cannot write that line refuses the call)."""
        if self.audit is None:
            return self._call(method, arguments, progress)
        self.audit.check()
        started = time.monotonic()
        error: BaseException | None = None
        try:
            return self._call(method, arguments, progress)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.audit.record(
                principal=self.principal.name,
                method=method,
                arguments=arguments,
                error=error,
                seconds=time.monotonic() - started,
            )

    def _call(self, method: str, arguments: dict[str, Any], progress: Callable[[str], None]) -> Any:
        if method not in self._methods:
            raise InvalidArgument("method", f"{names.shown(method)} is not a pyro SDK method")
        if method in ADMIN_ONLY and not self.principal.admin:
            raise InvalidArgument(
                method, "acts on the whole server; only an admin token may (token create --admin)"
            )
        arguments = dict(arguments)
        declared = crossings.declared(getattr(type(self.engine), method))
        _current.progress = progress
        _current.uploads = []
        try:
            with contextlib.ExitStack() as cleanup, self._names_unprefixed():
                self._check_capabilities(declared, arguments)
                self._name_in(method, arguments)
                self._check_refs(method, arguments)
                shown = self._cross_in(method, declared, arguments, cleanup)
                download = self._cross_out(method, declared, arguments, cleanup)
                cleanup.enter_context(self._registries_checked())
                cleanup.enter_context(images.local_image_check(self._check_local_image))
                self._environments_in(method, declared, arguments)
                if method == "prune_environments" and not self.principal.admin:
                    return self._prune_own(bool(arguments.get("all")))
                if method in _STARTS or method in ("create_vm", "run_in_vm"):
                    with self._admission:
                        self._check_limits(method)
                        result = getattr(self.engine, method)(**arguments)
                        self._record(method, result)
                else:
                    result = getattr(self.engine, method)(**arguments)
                if download is not None:
                    result = {**result, wire.DOWNLOAD: download(result)}
                return self._filtered(method, _shown_as(result, shown))
        finally:
            _current.progress = None
            _current.uploads = []

    # ----------------------------------------------------------------- names
    #
    # Workspace names are the principal's own: stored as "PRINCIPAL.NAME"
    # (token names hold no dot), shown without the prefix. Another principal
    # can use the same name, and nothing tells either that the other exists.

    @property
    def _prefix(self) -> str:
        return self.principal.name + "."

    def _name_in(self, method: str, arguments: dict[str, Any]) -> None:
        name = arguments.get("name")
        if method not in _NAMES_WORKSPACES or not isinstance(name, str):
            return
        room = names.MAX_NAME - len(self._prefix)
        if method == "fork_workspace":
            room -= 4  # "-K" suffixes of several forks
        if len(name) > room:
            raise InvalidArgument("name", f"is at most {room} characters on this server")
        arguments["name"] = self._prefix + names.check_name("name", name)

    @contextlib.contextmanager
    def _names_unprefixed(self) -> Iterator[None]:
        """Errors that quote one of the principal's names quote it as the principal wrote it
        (and never name another principal's environment)."""
        try:
            yield
        except PyroError as exc:
            text = str(exc).replace(f"'{self._prefix}", "'")
            if not self.principal.admin:
                text = _OTHERS_ENVIRONMENT.sub(
                    lambda m: m.group(0) if m.group(1) == self._env_prefix else "(not yours)",
                    text,
                ).replace(self._env_prefix, "")
            exc.args = (text,)
            raise

    # ---------------------------------------------------------- environments
    #
    # A non-admin principal's environments live in its own namespace: stored as
    # "u-HASH.NAME", shown as NAME, invisible to other principals. Curated
    # environments and the ones an admin installs are shared, read-only to the
    # rest. A name the call uses is the principal's own if it has one, else the
    # shared one; a name it installs is always its own and may not shadow a
    # shared one.

    @property
    def _env_prefix(self) -> str:
        digest = hashlib.sha256(self.principal.name.encode()).hexdigest()[:8]
        return f"u-{digest}."

    def _environments_in(
        self, method: str, declared: crossings.Declared, arguments: dict[str, Any]
    ) -> None:
        for field, kind in declared.names.items():
            value = arguments.get(field)
            if kind is Names.NEW_ENVIRONMENT and value is None and method == "pull_environment":
                value = self._default_pull_name(arguments)
                if value is None:  # a curated pull: the shared environment
                    if arguments.get("force") and not self.principal.admin:
                        raise InvalidArgument("force", _SHARED_FORCE.format(arguments["reference"]))
                    continue
            if value is None:
                continue
            names.check_environment(field, value)
            if OWNED_ENVIRONMENT.match(value):
                if self.principal.admin:
                    continue  # an admin may name a principal's environment as stored
                raise InvalidArgument(
                    field, f"names of the form u-HASH.NAME are this server's own; {_PICK}"
                )
            if self.principal.admin:
                continue
            own = self._env_prefix + value
            if kind is Names.ENVIRONMENT:
                if self._installed(own):
                    arguments[field] = own
                continue
            if value in CATALOG or self._installed(value):
                if method == "pull_environment" and arguments.get("reference") == value:
                    if arguments.get("force"):
                        raise InvalidArgument("force", _SHARED_FORCE.format(value))
                    arguments[field] = value  # installs or verifies the shared one
                    continue
                raise InvalidArgument(
                    field,
                    f"{value} is an environment shared by everybody on this server; you "
                    f"cannot replace or shadow it. {_PICK}",
                )
            room = 63 - len(self._env_prefix)
            if len(value.split(":", 1)[0]) > room:
                raise InvalidArgument(field, f"at most {room} characters before the ':' here")
            self._check_env_quota(own)
            arguments[field] = own
        if method == "remove_environment" and not self.principal.admin:
            name = arguments.get("name")
            shared = isinstance(name, str) and not name.startswith(self._env_prefix)
            if shared and self._installed(str(name)):
                raise InvalidArgument(
                    "name",
                    f"{name} is shared by everybody on this server; only an admin removes it "
                    "(you may remove the environments you pulled, built or saved)",
                )

    def _default_pull_name(self, arguments: dict[str, Any]) -> str | None:
        reference = arguments.get("reference")
        if not isinstance(reference, str) or reference in CATALOG:
            return None
        return images.parse_reference(reference).default_name

    def _installed(self, name: str) -> bool:
        try:
            return bool(self.engine._vms.environments.status(name).installed)
        except PyroError:
            return False

    def _own_environments(self) -> list[dict[str, Any]]:
        listed = self.engine._vms.environments.describe(self.engine._vms.environments.list())
        return [e for e in listed if str(e.get("name", "")).startswith(self._env_prefix)]

    def _check_env_quota(self, new: str) -> None:
        gib = self.principal.max_env_gib
        if gib is None:
            return
        used = sum(
            int(e.get("size_bytes") or 0)
            for e in self._own_environments()
            if e.get("installed") and e["name"] != new
        )
        if used >= gib * 2**30:
            raise QuotaExceeded(
                f"token {self.principal.name!r} may keep {gib:g} GiB of environments "
                f"(--max-env-gib {gib:g}); its environments take {used / 2**30:.2f} GiB. "
                "Remove one first (pyro env rm NAME)"
            )

    def _prune_own(self, everything: bool) -> dict[str, Any]:
        """``env prune`` by a non-admin: with ``all``, removes its own environments that
        nothing uses; the server's leftovers are the admin's to prune."""
        removed: list[str] = []
        freed = 0
        for entry in self._own_environments() if everything else []:
            try:
                done = self.engine.remove_environment(entry["name"])
            except PyroError:
                continue  # in use: kept
            removed.append(entry["name"])
            freed += int(done.get("freed_bytes") or 0)
        return {"removed": removed, "freed_bytes": freed}

    def _name_out(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._name_out(item) for item in value]
        if not isinstance(value, dict):
            return value
        value = {key: self._name_out(item) for key, item in value.items()}
        name = value.get("name")
        if "workspace_id" in value and isinstance(name, str) and name.startswith(self._prefix):
            value["name"] = name[len(self._prefix) :]
        return value

    def published_host_port(self, workspace: str, guest_port: int) -> int:
        """The server-side port a service of the principal's ``workspace`` publishes
        ``guest_port`` on (for ``pyro workspace port-forward``).

        Raises:
            NotFound: not the principal's workspace.
            InvalidArgument: no service publishes that port.
        """
        ref = self._own_workspace(workspace)
        services = self.engine.list_services(ref)["services"]
        for service in services:
            for port in service.get("published_ports", []):
                if port["guest_port"] == guest_port:
                    return int(port["host_port"])
        raise InvalidArgument(
            "guest_port",
            f"no service of {workspace} publishes guest port {guest_port}; start one with "
            f"published_ports=[{guest_port}] (its workspace needs network_policy "
            "egress+published-ports)",
        )

    # ------------------------------------------------------------- ownership

    def _check_refs(self, method: str, arguments: dict[str, Any]) -> None:
        if "workspace" in arguments:
            arguments["workspace"] = self._own_workspace(arguments["workspace"])
        if "vm_id" in arguments:
            self._own_vm(arguments["vm_id"])

    def _own_workspace(self, ref: Any) -> str:
        """``ref`` if this principal owns the workspace it names (or it is gone and
        was theirs, for the engine's own "no longer exists" answer)."""
        ref = names.check_workspace_ref(ref)
        store = self.engine._vms.store
        found = None
        if not names.WORKSPACE_ID.match(ref) and len(self._prefix + ref) <= names.MAX_NAME:
            found = store.find_workspace(self._prefix + ref)
        found = found or store.find_workspace(ref)
        if found is None:
            tombstone = store.find_tombstone(ref)
            if tombstone is not None and self._mine("workspace", tombstone["workspace_id"]):
                return str(ref)
        elif self._mine("workspace", found["workspace_id"]):
            return str(found["workspace_id"])
        raise NotFound(f"no workspace {names.shown(ref)}; see `pyro workspace list`")

    def _own_vm(self, vm_id: Any) -> None:
        if not self._mine("vm", names.check_vm_id(vm_id)):
            raise NotFound(f"no VM {vm_id!r}; list VMs with `pyro vm list`")

    def _mine(self, kind: str, ref: str) -> bool:
        return self.principal.admin or self.registry.owner(kind, ref) == self.principal.name

    def _record(self, method: str, result: Any) -> None:
        if method == "create_vm":
            self.registry.own("vm", result["vm_id"], self.principal.name)
        elif method == "create_workspace":
            self.registry.own("workspace", result["workspace_id"], self.principal.name)
        elif method == "fork_workspace":
            for fork in result["forks"]:
                self.registry.own("workspace", fork["workspace_id"], self.principal.name)

    def _filtered(self, method: str, result: Any) -> Any:
        result = self._name_out(_scrub_seed(result, str(self.spool.parent)))
        if method == "doctor" and isinstance(result, dict):
            result["server"] = self._isolation()
        if self.principal.admin:
            return result
        result = _environments_shown(result, self._env_prefix)
        if method == "list_environments" and isinstance(result, list):
            return [e for e in result if not OWNED_ENVIRONMENT.match(str(e.get("name", "")))]
        if method == "list_workspaces":
            mine = self.registry.owned("workspace", self.principal.name)
            workspaces = [w for w in result["workspaces"] if w["workspace_id"] in mine]
            return {"count": len(workspaces), "workspaces": workspaces}
        if method == "list_vms":
            mine = self.registry.owned("vm", self.principal.name)
            return [v for v in result if v["vm_id"] in mine]
        return result

    def _isolation(self) -> dict[str, Any]:
        """What this server shares between principals (``doctor`` through it)."""
        merge = config.memory_merge_enabled()
        return {
            "principal": self.principal.name,
            "admin": self.principal.admin,
            "warm_snapshots": f"per principal: {self.engine.paths.warm_root}",
            "guest_memory_merge": "on (--memory-merge)" if merge else "off",
            "note": "no two principals' guests map one snapshot file"
            + ("" if not merge else "; identical pages of different guests may be merged"),
        }

    # ---------------------------------------------------------------- limits

    def _check_limits(self, method: str) -> None:
        limit = self.principal.max_running
        if limit is not None and method in _STARTS:
            live = [w for w in self._own_workspaces() if w["state"] in _LIVE]
            if len(live) >= limit:
                shown = ", ".join(w["name"] or w["workspace_id"] for w in live)
                raise QuotaExceeded(
                    f"token {self.principal.name!r} may keep {limit} workspace(s) running "
                    f"(--max-running {limit}); running now: {shown}. Stop or delete one first"
                )
        gib = self.principal.max_disk_gib
        if gib is not None and method in _STARTS:
            used = sum(used_bytes(self._folder(w["workspace_id"])) for w in self._own_workspaces())
            if used >= gib * 2**30:
                raise QuotaExceeded(
                    f"token {self.principal.name!r} may use {gib:g} GiB of disk "
                    f"(--max-disk-gib {gib:g}); its workspaces use {used / 2**30:.2f} GiB. "
                    "Delete a workspace or its snapshots first"
                )

    def _own_workspaces(self) -> list[dict[str, Any]]:
        mine = self.registry.owned("workspace", self.principal.name)
        listed = self.engine.list_workspaces()["workspaces"]
        return [self._name_out(w) for w in listed if w["workspace_id"] in mine]

    def _folder(self, workspace_id: str) -> Path:
        return self.engine.paths.state_dir / "workspaces" / workspace_id

    # ----------------------------------------------------- operator switches

    def _check_capabilities(self, declared: crossings.Declared, arguments: dict[str, Any]) -> None:
        for name, needed in declared.capabilities.items():
            if arguments.get(name) and not self._may(needed):
                raise InvalidArgument(name, _needs(self.principal.name, needed))

    def _may(self, needed: Capability) -> bool:
        return self.principal.admin or needed.value in self.principal.capabilities

    @contextlib.contextmanager
    def _registries_checked(self) -> Iterator[None]:
        """Registries this call contacts (a pull, a build's FROM) must not resolve to
        private or local addresses, the server's own included, unless allowed; and
        skopeo then runs confined, so neither a redirect nor a name that resolves
        elsewhere a moment later reaches one (``egress/fetch_proxy.py``)."""
        if self._may(Capability.PRIVATE_REGISTRY):
            yield
            return

        operators = urlsplit("//" + (config.environment_registry() or "")).netloc

        def operators_own(registry: str) -> bool:
            return bool(operators) and registry == operators.split("/", 1)[0]

        def check(registry: str) -> None:
            if operators_own(registry):
                return  # PYRO_ENVIRONMENT_REGISTRY: the operator's own choice
            addresses = _resolve(registry)
            private = [a for a in addresses if not is_public(a)]
            if private or not addresses:
                shown = ", ".join(private[:3]) or "no address"
                raise InvalidArgument(
                    "reference",
                    f"the registry {registry} resolves to a private or local address, or "
                    f"this server's own ({shown}); "
                    + _needs(self.principal.name, Capability.PRIVATE_REGISTRY),
                )

        with (
            images.registry_check(check),
            images.confined_fetches(
                lambda registry: None if operators_own(registry) else EgressPolicy()
            ),
        ):
            yield

    # ------------------------------------------------------------ host paths

    def _check_local_image(self, path: str) -> None:
        """A local image this call reads must be one it uploaded: a Dockerfile's
        FROM or a project's image never opens a file of the server."""
        real = Path(os.path.realpath(path))
        if any(real == upload or real.is_relative_to(upload) for upload in _current.uploads):
            return
        raise InvalidArgument(
            "reference",
            f"{names.shown(path)} names a path of the server; pyro server never reads its "
            "own files for a client. Name a registry image or an installed environment, "
            "or pull your local image first with `pyro --remote URL env pull` (it uploads it)",
        )

    def _cross_in(
        self,
        method: str,
        declared: crossings.Declared,
        arguments: dict[str, Any],
        cleanup: contextlib.ExitStack,
    ) -> dict[str, str]:
        """Each declared crossing in its carried form, made into what the engine
        takes; arguments that could name a server path and declare no crossing
        are refused. Returns server paths to show as the client's."""
        for name in declared.undeclared_paths:
            if arguments.get(name) is not None:
                raise InvalidArgument(
                    name,
                    f"{method} declares no way for {name} to cross from a client, so pyro "
                    "server refuses it: it would name a path of the server",
                )
        if "origin" in arguments and arguments["origin"] is not None:
            arguments["origin"] = tuple(arguments["origin"])
        shown: dict[str, str] = {}
        kinds = {kind: name for name, kind in declared.crossings.items()}
        for name, kind in declared.crossings.items():
            value = arguments.get(name)
            if kind is Crossing.SECRETS:
                if isinstance(value, list) and any(
                    isinstance(item, dict) and "file_path" in item for item in value
                ):
                    raise InvalidArgument(
                        name, "give values; a file_path names a file of the caller's machine"
                    )
                continue
            if value is None or kind is Crossing.INSIDE:
                continue
            if kind is Crossing.SECRET_FILES:
                if value:
                    raise InvalidArgument(
                        name,
                        "names files of the caller's machine; pyro server never reads its "
                        "own files for a client (the remote SDK reads each secret and sends "
                        "its value)",
                    )
            elif kind in (Crossing.WRITE, Crossing.WRITE_DISK):
                continue  # _cross_out
            elif kind is Crossing.PUSH_REFERENCE:
                if crossings.local_image(value):
                    raise InvalidArgument(
                        name,
                        f"{value} names a path of the server; through pyro server an "
                        "environment is pushed to a registry",
                    )
            elif kind is Crossing.REFERENCE:
                arguments[name] = self._image_upload(name, value, cleanup)
            else:
                path = self._taken(name, value, cleanup)
                if kind is Crossing.PROJECT:
                    # The project's tracked files came packed: the engine takes them as
                    # the method's seed.
                    seed = kinds.get(Crossing.READ)
                    if seed is None:
                        raise InvalidArgument(name, f"{method} takes no uploaded project")
                    arguments[seed], arguments[name] = path, None
                elif kind is Crossing.FOLDER:
                    folder = self._unpack(name, path, value, cleanup)
                    arguments[name] = folder
                    origin = value.get("origin")
                    if isinstance(origin, str):
                        shown[str(folder)] = origin
                    inside = kinds.get(Crossing.INSIDE)
                    if inside is not None and arguments.get(inside) is not None:
                        arguments[inside] = _inside(inside, folder, arguments[inside])
                else:
                    arguments[name] = path
        inside = kinds.get(Crossing.INSIDE)
        folder_name = kinds.get(Crossing.FOLDER)
        if (
            inside
            and arguments.get(inside) is not None
            and arguments.get(folder_name or "") is None
        ):
            raise InvalidArgument(inside, "is read inside an uploaded folder, and none came")
        return shown

    def _taken(self, name: str, value: Any, cleanup: contextlib.ExitStack) -> Path:
        """The spooled upload ``value`` names (removed after the call)."""
        ticket = value.get(wire.UPLOAD) if isinstance(value, dict) else None
        path = None
        if isinstance(ticket, str):
            path = self.registry.take("upload", ticket, self.principal.name)
        if path is None:
            raise InvalidArgument(
                name,
                "must be an upload made with this token (the remote SDK and CLI upload "
                "a local path for you); pyro server never reads its own files for a client",
            )
        cleanup.callback(_remove, path)
        return path

    def _unpack(
        self, field: str, archive: Path, value: dict[str, Any], cleanup: contextlib.ExitStack
    ) -> Path:
        """An uploaded folder, unpacked with the seed checks into a folder of its own
        (named as on the client: a project's environment is)."""
        folder = self._holder(cleanup) / _plain_name(field, value.get("name", "context"))
        stage_seed(archive, folder)
        return folder

    def _holder(self, cleanup: contextlib.ExitStack) -> Path:
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        holder = Path(tempfile.mkdtemp(prefix="unpacked-", dir=self.spool))
        cleanup.callback(shutil.rmtree, holder, True)
        return holder

    def _image_upload(self, field: str, value: Any, cleanup: contextlib.ExitStack) -> Any:
        """An image reference: a registry's as it is; a local form only as an upload
        (the client's archive or packed layout), checked to be what it says."""
        if isinstance(value, str):
            form = crossings.local_image(value)
            if form is not None:
                raise InvalidArgument(
                    field,
                    f"{value} names a path of the server; pyro server never reads its own "
                    f"files for a client. Give the {form} path of your machine to `pyro "
                    "--remote URL env pull` (or the remote SDK): it uploads it",
                )
            return value
        form = value.get("form") if isinstance(value, dict) else None
        if form not in ("oci", "oci-archive", "docker-archive"):
            raise InvalidArgument(
                field, "an uploaded image names its form: oci, oci-archive or docker-archive"
            )
        archive = self._taken(field, value, cleanup)
        tag = value.get("tag") or ""
        if not isinstance(tag, str) or not images.TAG.fullmatch(tag or "latest"):
            raise InvalidArgument(field, f"{names.shown(tag)} is not an image tag")
        place = self._holder(cleanup) / _plain_name(field, value.get("name", "image"))
        if form == "oci":
            stage_seed(archive, place)
        else:
            shutil.move(archive, place)
        _current.uploads.append(Path(os.path.realpath(place)))
        why = images.not_an_image(place, form)
        if why is not None:
            raise InvalidArgument(
                field,
                f"the uploaded {names.shown(value.get('name'))} is not an {form} image: {why}",
            )
        return f"{form}:{place}" + (f":{tag}" if tag else "")

    def _cross_out(
        self,
        method: str,
        declared: crossings.Declared,
        arguments: dict[str, Any],
        cleanup: contextlib.ExitStack,
    ) -> Callable[[dict[str, Any]], str] | None:
        writes = (Crossing.WRITE, Crossing.WRITE_DISK)
        field = next((n for n, k in declared.crossings.items() if k in writes), None)
        if field is None:
            return None
        disk = declared.crossings[field] is Crossing.WRITE_DISK
        if arguments.get(field) != {wire.DOWNLOAD: True}:
            raise InvalidArgument(
                field,
                "a remote export is downloaded by the client (the remote SDK and CLI "
                "write it to a local path for you); pyro server never writes a client's path",
            )
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder = Path(tempfile.mkdtemp(prefix="export-", dir=self.spool))
        produced = folder / "out"
        arguments[field] = produced
        arguments.pop("overwrite", None)  # the client checks its own output
        kept = False

        def finish(result: dict[str, Any]) -> str:
            nonlocal kept
            if disk:
                archive = produced
            else:
                archive = folder / "export.tar"
                with tarfile.open(archive, "w") as tar:
                    if produced.is_dir():
                        for entry in sorted(os.listdir(produced)):
                            tar.add(produced / entry, arcname=entry)
                    else:
                        tar.add(produced, arcname=produced.name)
                _remove(produced)
            ticket = self.registry.spool("download", self.principal.name, archive)
            kept = True
            return ticket

        def drop_unless_kept() -> None:
            if not kept:
                shutil.rmtree(folder, ignore_errors=True)

        cleanup.callback(drop_unless_kept)
        return finish


_SHARED_FORCE = "{} is shared by everybody on this server; only an admin rebuilds it (--force)"
_PICK = "Pick another name; yours are yours alone (pyro env list shows them)"
_OTHERS_ENVIRONMENT = re.compile(r"(u-[0-9a-f]{8}\.)[a-z0-9._:-]*")


# The fields of pyro's answers that may name an environment; guest output
# (stdout, file contents, patches, logs) is never rewritten.
_ENVIRONMENT_FIELDS = frozenset(
    {"environment", "name", "shared_with", "path", "build_dir", "disk", "chain"}
    | {"problem", "reason", "fix", "warnings"}
)


def _environments_shown(value: Any, own: str, field: str | None = None) -> Any:
    """``value`` with the principal's own environment names as it wrote them, and
    other principals' hidden (left out of ``shared_with``)."""
    if isinstance(value, list):
        items = [_environments_shown(item, own, field) for item in value]
        if field == "shared_with":
            items = [i for i in items if not (isinstance(i, str) and OWNED_ENVIRONMENT.match(i))]
        return items
    if isinstance(value, dict):
        return {key: _environments_shown(item, own, key) for key, item in value.items()}
    if isinstance(value, str) and field in _ENVIRONMENT_FIELDS and "u-" in value:
        return _OTHERS_ENVIRONMENT.sub("(not yours)", value.replace(own, ""))
    return value


def _needs(principal: str, needed: Capability) -> str:
    return (
        f"an operator switch ({crossings.CAPABILITY_HELP[needed]}): token {principal!r} "
        f"lacks the capability {needed.value!r}. An admin of this server grants it with "
        f"`pyro server token create NAME --allow {needed.value}`"
    )


def _resolve(registry: str) -> list[str]:
    """The addresses ``registry`` (``host[:port]``, IPv6 in brackets) resolves to."""
    try:
        host = urlsplit("//" + registry).hostname or ""
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):
        return []
    return sorted({str(item[4][0]) for item in found})


def _plain_name(field: str, name: Any) -> str:
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise InvalidArgument(field, f"{names.shown(name)} is not a file or folder name")
    if len(name.encode()) > 200:
        raise InvalidArgument(field, "a file or folder name of at most 200 bytes")
    return name


def _inside(field: str, folder: Path, relative: Any) -> Path:
    if not isinstance(relative, str):
        raise InvalidArgument(field, "must be a path inside the uploaded folder")
    file = (folder / relative).resolve()
    if not file.is_relative_to(folder.resolve()):
        raise InvalidArgument(field, "must name a file inside the uploaded folder")
    return file


def _shown_as(value: Any, shown: dict[str, str]) -> Any:
    """Server paths of unpacked uploads, shown as the client's paths they came from."""
    if not shown:
        return value
    if isinstance(value, list):
        return [_shown_as(item, shown) for item in value]
    if isinstance(value, dict):
        return {key: _shown_as(item, shown) for key, item in value.items()}
    if isinstance(value, str):
        for server, client in shown.items():
            if value == server or value.startswith(server + "/"):
                return client + value[len(server) :]
    return value


def _scrub_seed(value: Any, spool: str) -> Any:
    """Seeds that came as uploads, shown by where they came from on the client
    (the server's spool path means nothing there)."""
    if isinstance(value, list):
        return [_scrub_seed(item, spool) for item in value]
    if not isinstance(value, dict):
        return value
    value = {key: _scrub_seed(item, spool) for key, item in value.items()}
    seed = value.get("seed")
    if isinstance(seed, dict) and str(seed.get("source") or "").startswith(spool):
        project = seed.get("origin_kind") == "project_path"
        value["seed"] = {
            **seed,
            "source": seed.get("origin_ref"),
            "kind": "project" if project else seed.get("kind"),
        }
    shown = value.get("workspace_seed")
    if isinstance(shown, dict) and str(shown.get("seed_path") or "").startswith(spool):
        value["workspace_seed"] = {**shown, "seed_path": shown.get("origin_ref")}
    return value


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
