"""The remote transport: a ``Pyro`` whose engine is a ``pyro server`` elsewhere.

Every SDK call becomes one HTTP request (see ``wire``). What touches the
caller's own disk happens here, on the caller's side: a seed directory,
archive or Git project is packed and uploaded first; an export is written
back locally with the same checks a local export makes; secret files are read
here and only their values travel. The server never reads or writes a path a
client names.

Needs neither QEMU nor KVM nor root: it runs on any laptop with Python.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpx2

import pyro_mcp.transport.wire as wire
from pyro_mcp import crossings
from pyro_mcp.crossings import Crossing
from pyro_mcp.errors import InvalidArgument, PyroError, RemoteError
from pyro_mcp.version import __version__
from pyro_mcp.workspaces import project_source, transfer
from pyro_mcp.workspaces import secrets as secret_store
from pyro_mcp.workspaces.seed import ARCHIVE_SUFFIXES, MAX_SEED_FILES

Progress = Callable[[str], None]
# How long to wait for the server to accept a connection; the calls
# themselves may run for minutes (an environment pull) and report progress.
CONNECT_TIMEOUT = 10.0


class RemoteTransport:
    """Speaks to a ``pyro server`` at ``url`` with a bearer ``token``.

    Example::

        from pyro_mcp import Pyro
        from pyro_mcp.transport import RemoteTransport
        pyro = Pyro(transport=RemoteTransport("https://kvm-box:8787", token))

    Args:
        url: the server's base URL (``http://`` only for loopback, or a server
            started with ``--insecure``).
        token: from ``pyro server token create NAME`` on the server.
        ca_file: a PEM bundle to trust besides the system's (a private CA).
    """

    def __init__(self, url: str, token: str | None = None, *, ca_file: str | Path | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument("remote", f"{url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        headers = {wire.VERSION_HEADER: __version__}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        verify: ssl.SSLContext | bool = True
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            try:
                verify = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            except (OSError, ssl.SSLError) as exc:
                raise InvalidArgument("ca_file", f"cannot read {ca_file}: {exc}") from exc
            self._ssl = verify
        self._http = httpx2.Client(
            base_url=self.url + wire.API,
            headers=headers,
            verify=verify,
            timeout=httpx2.Timeout(CONNECT_TIMEOUT, read=None),
            # A server on the LAN is never reached through the host's web proxy.
            trust_env=False,
        )
        self._hello: dict[str, Any] | None = None

    def close(self) -> None:
        """Close the connections (also done when the transport is garbage collected)."""
        self._http.close()

    def __enter__(self) -> RemoteTransport:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._http.close()

    def hello(self) -> dict[str, Any]:
        """The server's version and who this token is (checked once, before any work).

        Raises:
            RemoteError: unreachable, the token refused, or another version.
        """
        if self._hello is None:
            with self._request("GET", "/hello") as response:
                self._hello = json.loads(response.read())
        return self._hello

    # ---------------------------------------------------------- port forward

    def forward_port(
        self,
        workspace: str,
        guest_port: int,
        *,
        local_port: int = 0,
        ready: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Serve 127.0.0.1:``local_port`` here, each connection carried to the port a
        service of ``workspace`` publishes ``guest_port`` on, on the server's loopback.

        ``ready(port)`` is called once listening; runs until ``stop`` is set.

        Raises:
            NotFound, InvalidArgument: checked once before listening (not the
                caller's workspace; no service publishes that port).
            InvalidArgument: ``local_port`` is taken here.
        """
        self.hello()
        self._open_tunnel(workspace, guest_port).close()  # fail now, not at first use
        try:
            listener = socket.create_server(("127.0.0.1", local_port))
        except OSError as exc:
            raise InvalidArgument("local_port", f"127.0.0.1:{local_port}: {exc}") from exc
        with listener:
            listener.settimeout(0.5)
            if ready is not None:
                ready(listener.getsockname()[1])
            while stop is None or not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                threading.Thread(
                    target=self._carry, args=(connection, workspace, guest_port), daemon=True
                ).start()

    def _open_tunnel(self, workspace: str, guest_port: int) -> Any:
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = f"{scheme}://{parts.netloc}{parts.path}{wire.API}/ports/{workspace}/{guest_port}"
        wanted = ("authorization", wire.VERSION_HEADER.lower())
        headers = {k: v for k, v in self._http.headers.items() if k.lower() in wanted}
        ssl_context = self._ssl if parts.scheme == "https" else None
        try:
            tunnel = connect(url, additional_headers=headers, ssl=ssl_context, max_size=None)
            first = json.loads(tunnel.recv(timeout=60))
        except InvalidStatus as exc:
            if exc.response.status_code == 403:
                raise RemoteError(
                    f"the pyro server at {self.url} refused the token: set PYRO_TOKEN"
                ) from exc
            raise RemoteError(f"cannot open a tunnel through {self.url}: {exc}") from exc
        except (OSError, WebSocketException, TimeoutError, ValueError) as exc:
            raise RemoteError(f"cannot open a tunnel through {self.url}: {exc}") from exc
        if "error" in first:
            tunnel.close()
            wire.raise_error(first["error"])
        return tunnel

    def _carry(self, connection: socket.socket, workspace: str, guest_port: int) -> None:
        with connection:
            try:
                tunnel = self._open_tunnel(workspace, guest_port)
            except PyroError:
                return
            with tunnel:

                def upstream() -> None:
                    with contextlib.suppress(Exception):
                        while data := connection.recv(wire.CHUNK_BYTES):
                            tunnel.send(data)
                    with contextlib.suppress(Exception):
                        tunnel.close()

                threading.Thread(target=upstream, daemon=True).start()
                with contextlib.suppress(Exception):
                    for message in tunnel:
                        connection.sendall(
                            message if isinstance(message, bytes) else message.encode()
                        )

    # ----------------------------------------------------------------- calls

    def call(self, method: str, arguments: dict[str, Any], progress: Progress) -> Any:
        """Run the SDK method ``method`` on the server with ``arguments``.

        What each argument carries across is what the method's signature
        declares (``pyro_mcp.crossings``): paths to read are uploaded, paths
        to write are downloaded into, secret files are read here.
        """
        self.hello()
        declared = crossings.of(method)
        with contextlib.ExitStack() as cleanup:
            arguments, finish = self._carry_out(method, declared, arguments, cleanup)
            return finish(self._call(method, arguments, progress))
        raise AssertionError("unreachable")  # pragma: no cover (ExitStack swallows nothing)

    def _call(self, method: str, arguments: dict[str, Any], progress: Progress) -> Any:
        body = json.dumps({"arguments": wire.encode(arguments)}).encode()
        final: dict[str, Any] | None = None
        with self._request("POST", f"/call/{method}", content=body) as response:
            # Read to the end (the server ends right after the answer): the
            # connection then carries the next call instead of a new one.
            for line in response.iter_lines():
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except json.JSONDecodeError as exc:
                    shown = line[:200]
                    raise RemoteError(f"the server sent an unreadable line: {shown!r}") from exc
                if "progress" in message:
                    progress(str(message["progress"]))
                elif final is None:
                    final = message
        if final is not None and "error" in final:
            wire.raise_error(final["error"])
        if final is None or "result" not in final:
            raise RemoteError(
                f"the connection to {self.url} ended before {method} answered; the server "
                "may have restarted: check the workspace's status before retrying"
            )
        return final["result"]

    @contextlib.contextmanager
    def _request(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx2.Response]:
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code != 200:
                    response.read()
                    _raise_status(self.url, response)
                yield response
        except httpx2.HTTPError as exc:
            raise RemoteError(
                f"cannot reach the pyro server at {self.url}: {exc or type(exc).__name__}. "
                "Is `pyro server serve` running there, and is the URL right?"
            ) from exc

    # -------------------------------------------------------- host crossings

    def _carry_out(
        self,
        method: str,
        declared: crossings.Declared,
        arguments: dict[str, Any],
        cleanup: contextlib.ExitStack,
    ) -> tuple[dict[str, Any], Callable[[Any], Any]]:
        """``arguments`` as they travel (see ``crossings.Crossing``), and what turns
        the server's answer into the local one."""
        arguments = dict(arguments)
        for name, kind in declared.crossings.items():
            default = declared.parameters.get(name)
            if kind is Crossing.FOLDER and arguments.get(name) is None and isinstance(default, str):
                arguments[name] = default  # a build's context "." is this machine's
        given = {
            kind: name
            for name, kind in declared.crossings.items()
            if arguments.get(name) is not None
        }
        finish: Callable[[Any], Any] = lambda result: result  # noqa: E731
        read, project = given.get(Crossing.READ), given.get(Crossing.PROJECT)
        if read and project:
            raise InvalidArgument(read, f"give {read} or {project}, not both")
        if project:
            given_path = Path(arguments[project]).expanduser()
            root = project_source.git_toplevel(given_path)
            if root is None:
                raise InvalidArgument(project, f"{given_path} is not inside a Git checkout")
            tracked = project_source.tracked_files(root)
            arguments[project] = self._upload(root, tracked, cleanup, field=project)
            if "origin" in declared.parameters:
                arguments.setdefault("origin", (project, str(root)))
        if read:
            local = Path(arguments[read]).expanduser().absolute()
            arguments[read] = self._upload(local, None, cleanup, field=read)
            if "origin" in declared.parameters:
                arguments.setdefault("origin", (read, str(local)))
            finish = _with_local(read, str(local))
        if folder := given.get(Crossing.FOLDER):
            local = Path(arguments[folder]).expanduser().absolute()
            if not local.is_dir():
                raise InvalidArgument(folder, f"{local} is not a folder")
            if inside := given.get(Crossing.INSIDE):
                path = Path(arguments[inside]).expanduser().absolute()
                try:
                    arguments[inside] = str(path.relative_to(local))
                except ValueError as exc:
                    raise InvalidArgument(
                        inside,
                        f"{path} is outside the {folder} {local}; only that folder is sent "
                        "to the server: put it inside",
                    ) from exc
            ticket = self._upload(local, None, cleanup, field=folder)
            arguments[folder] = {**ticket, "name": local.name, "origin": str(local)}
        write = given.get(Crossing.WRITE) or given.get(Crossing.WRITE_DISK)
        if write:
            overwrite = bool(arguments.get("overwrite"))
            output = cleanup.enter_context(transfer.placing(Path(arguments[write]), overwrite))
            arguments[write] = {wire.DOWNLOAD: True}
            raw = declared.crossings[write] is Crossing.WRITE_DISK
            finish = lambda result: self._download(  # noqa: E731
                result, output, overwrite, raw=raw, field=write
            )
        secrets_field = next(
            (n for n, k in declared.crossings.items() if k is Crossing.SECRETS), None
        )
        files_field = next(
            (n for n, k in declared.crossings.items() if k is Crossing.SECRET_FILES), None
        )
        if secrets_field and files_field:
            _read_secrets(arguments, secrets_field, files_field)
        if reference := given.get(Crossing.REFERENCE):
            arguments[reference] = self._upload_image(arguments[reference], cleanup, reference)
        if (push := given.get(Crossing.PUSH_REFERENCE)) and crossings.local_image(arguments[push]):
            raise InvalidArgument(
                push,
                f"{arguments[push]} names a path; through pyro server an environment is "
                "pushed to a registry (HOST/PATH:TAG). To get an archive here, push to a "
                "registry and `skopeo copy` from it, or run pyro on this machine",
            )
        return arguments, finish

    def _upload_image(
        self, reference: str, cleanup: contextlib.ExitStack, field: str
    ) -> str | dict[str, str]:
        """A local image reference as an upload: an archive as it is, an OCI layout
        folder packed into a tar. Registry references travel as they are."""
        split = crossings.split_local_image(reference)
        if split is None:
            return reference
        form, path, tag = split
        local = Path(path).expanduser().absolute()
        if form == "oci":
            if not local.is_dir():
                raise InvalidArgument(field, f"{local} is not an OCI layout folder")
            folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="pyro-up-")))
            archive = folder / "layout.tar"
            with tarfile.open(archive, "w") as tar:
                for entry in sorted(os.listdir(local)):
                    tar.add(local / entry, arcname=entry, filter=_plain_layout_member)
        elif local.is_file():
            archive = local
        else:
            raise InvalidArgument(field, f"{local} is not a file")
        ticket = self._send(archive, ".tar", field=field, source=local)
        return {**ticket, "form": form, "name": local.name, "tag": tag}

    def _upload(
        self,
        source: Path,
        only: list[str] | None,
        cleanup: contextlib.ExitStack,
        *,
        field: str = "seed_path",
    ) -> dict[str, str]:
        """Pack ``source`` (only the paths ``only`` lists, if given) and upload it."""
        if not source.exists():
            raise InvalidArgument(field, f"{source} does not exist")
        if source.is_file() and source.name.endswith(ARCHIVE_SUFFIXES):
            archive = source
        elif source.is_dir():
            folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="pyro-up-")))
            archive = folder / "seed.tar.gz"
            _pack(source, archive, only)
        else:
            raise InvalidArgument(
                field, f"{source} is neither a directory nor a .tar/.tar.gz/.tgz archive"
            )
        suffix = next(s for s in (".tar.gz", ".tgz", ".tar") if archive.name.endswith(s))
        return self._send(archive, suffix, field=field, source=source)

    def _send(self, archive: Path, suffix: str, *, field: str, source: Path) -> dict[str, str]:
        """Upload ``archive``; the ticket the server knows it by."""
        size = archive.stat().st_size
        if size > wire.MAX_UPLOAD_BYTES:
            raise InvalidArgument(
                field,
                f"{source} packs to {size} bytes; a server takes at most {wire.MAX_UPLOAD_BYTES}",
            )

        def chunks() -> Iterator[bytes]:
            with archive.open("rb") as stream:
                while chunk := stream.read(wire.CHUNK_BYTES):
                    yield chunk

        headers = {"Content-Length": str(size), "Pyro-Archive-Suffix": suffix}
        with self._request("POST", "/uploads", content=chunks(), headers=headers) as response:
            return {wire.UPLOAD: str(json.loads(response.read())["upload"])}

    def _download(
        self, result: dict[str, Any], output: Path, overwrite: bool, *, raw: bool, field: str
    ) -> Any:
        """Fetch the archive the server kept for ``result`` and place it at ``output``."""
        ticket = result.pop(wire.DOWNLOAD, None)
        if not isinstance(ticket, str):
            raise RemoteError("the server kept no export to download")
        with tempfile.TemporaryDirectory(prefix=".pyro-down-", dir=output.parent) as tmp:
            archive = Path(tmp) / "download"
            query = "?layout=extents" if raw else ""
            with (
                self._request("GET", f"/downloads/{ticket}{query}") as response,
                archive.open("wb") as out,
            ):
                if raw:
                    _write_extents(response, out)
                else:
                    received = 0
                    for chunk in response.iter_bytes(wire.CHUNK_BYTES):
                        received += len(chunk)
                        if received > transfer.MAX_EXPORT_BYTES:
                            raise RemoteError("the server sent more than an export may hold")
                        out.write(chunk)
            if raw:
                output = transfer.check_output(output, overwrite)
                transfer.replace_output(archive, output)
                return {**result, field: str(output)}
            kind = str(result.get("artifact_type"))
            placed = transfer.extract_export(archive, kind, output, overwrite)
        return {**result, "output": placed["output"]}


def _write_extents(response: httpx2.Response, out: BinaryIO) -> None:
    """A disk image sent as its data extents, written sparse into ``out``.

    Raises:
        RemoteError: the size or an extent is out of bounds, or the stream ends
            inside an extent.
    """
    try:
        size = int(response.headers.get(wire.DISK_SIZE_HEADER, ""))
    except ValueError:
        raise RemoteError("the server sent a disk image without its size") from None
    if not 0 <= size <= wire.MAX_DISK_IMAGE_BYTES:
        raise RemoteError(f"the server announced a disk image of {size} bytes")
    pending = b""
    left = 0  # bytes of the current extent still to come
    floor = 0  # extents come in order and never overlap
    for chunk in response.iter_bytes(wire.CHUNK_BYTES):
        pending += chunk
        while pending:
            if left:
                piece, pending = pending[:left], pending[left:]
                out.write(piece)
                left -= len(piece)
                continue
            if len(pending) < wire.EXTENT.size:
                break
            start, length = wire.EXTENT.unpack_from(pending)
            pending = pending[wire.EXTENT.size :]
            if start < floor or length > size - start:
                raise RemoteError(
                    f"the server sent an extent ({start}, {length}) outside the "
                    f"{size}-byte disk image"
                )
            out.seek(start)
            left, floor = length, start + length
    if left or pending:
        raise RemoteError("the disk image ended midway through an extent")
    out.truncate(size)


def _with_local(field: str, local: str) -> Callable[[Any], Any]:
    """An answer that repeats the uploaded argument shows the caller's path."""

    def finish(result: Any) -> Any:
        if isinstance(result, dict) and field in result:
            return {**result, field: local}
        return result

    return finish


def _plain_layout_member(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """An OCI layout holds folders and files only; links and the rest stay behind."""
    if not (member.isfile() or member.isdir()):
        return None
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def _raise_status(url: str, response: httpx2.Response) -> None:
    if response.status_code == 401:
        raise RemoteError(
            f"the pyro server at {url} refused the token: set PYRO_TOKEN to a token made "
            "with `pyro server token create NAME` on the server (tokens are shown once)"
        )
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and "error" in payload:
        wire.raise_error(payload["error"])
    raise RemoteError(f"the pyro server at {url} answered HTTP {response.status_code}")


def _pack(root: Path, archive: Path, only: list[str] | None) -> None:
    """``root`` as a gzip tar: links that lead out of it and special files left out."""
    count = 0

    def keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        nonlocal count
        if member.issym():
            target = PurePosixPath(member.name).parent / member.linkname
            if PurePosixPath(member.linkname).is_absolute() or not transfer.stays_inside(target):
                return None  # as a local seed does: never followed, never sent
        elif not (member.isfile() or member.isdir() or member.islnk()):
            return None
        count += 1
        if count > MAX_SEED_FILES:
            raise InvalidArgument("seed_path", f"{root} has more than {MAX_SEED_FILES} entries")
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        return member

    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        names = only if only is not None else sorted(os.listdir(root))
        for name in names:
            path = root / name
            if only is not None and not (path.is_file() or path.is_symlink()):
                continue  # tracked but gone from the working tree: skipped, as locally
            with contextlib.suppress(PermissionError):
                tar.add(path, arcname=name, recursive=only is None, filter=keep)


def _read_secrets(arguments: dict[str, Any], secrets_field: str, files_field: str) -> None:
    """Secret files (and 4.5's list form's ``file_path`` items) read here: only values
    travel."""
    secrets, files = arguments.get(secrets_field), arguments.pop(files_field, None)
    if secrets is not None and not isinstance(secrets, Mapping):
        secrets, files = _secrets_from_list(secrets, files)
    if files:
        secrets = {**(secrets or {}), **{k: _read_secret(k, v) for k, v in files.items()}}
    if secrets is not None:
        arguments[secrets_field] = secrets


def _secrets_from_list(
    items: Any, files: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    values, paths = secret_store.from_list(items, files)
    return dict(values or {}), dict(paths or {})


def _read_secret(name: str, spec: Any) -> Any:
    """A secret file's value, read here (``{"path", "hosts"}`` keeps its hosts)."""
    path = spec.get("path") if isinstance(spec, Mapping) else spec
    try:
        value = Path(str(path)).expanduser().read_text()
    except (OSError, UnicodeDecodeError, TypeError) as exc:
        raise InvalidArgument(f"secret_files.{name}", f"cannot read {path}: {exc}") from exc
    if isinstance(spec, Mapping) and "hosts" in spec:
        return {"value": value, "hosts": spec["hosts"]}
    return value
