"""What an SDK argument reaches beyond the engine, declared on the argument.

A ``Pyro`` method's signature marks, with ``typing.Annotated``, each argument
that names something on the caller's machine (a ``Crossing``) and each
operator switch (a ``Capability``)::

    def create_workspace(self, ..., seed_path: ReadPath | None = None,
                         allow_private_egress: PrivateEgress = False): ...

The remote client reads the same declarations to decide what to upload,
download or read locally, and ``pyro server`` to decide what it accepts:

- a declared crossing must arrive in its carried form (an upload ticket, a
  download request, a value instead of a file);
- an argument whose type could name a path (``Path`` in it) and that declares
  no crossing is refused outright, so a new argument is closed until someone
  says how it crosses;
- an operator switch is refused unless the token is an admin's or was created
  with the matching capability.

There is no table of method and argument names to keep in step.
"""

from __future__ import annotations

import enum
import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pyro_mcp.errors import InvalidArgument


class Crossing(enum.Enum):
    """How an argument's value crosses from a client's machine to the engine."""

    READ = "read"  # a file, folder or archive of the caller's: packed and uploaded
    FOLDER = "folder"  # a folder of the caller's: uploaded, unpacked on the server
    INSIDE = "inside"  # a path inside the FOLDER argument: sent relative to it
    PROJECT = "project"  # a Git checkout of the caller's: its tracked files, uploaded
    WRITE = "write"  # a path of the caller's the result is written to: downloaded
    WRITE_DISK = "write-disk"  # a disk image of the caller's: downloaded as its extents
    SECRET_FILES = "secret-files"  # files read on the caller's side; values travel
    SECRETS = "secrets"  # values (4.5's list form may name files, read on the caller's side)
    REFERENCE = "reference"  # an image; its oci:, oci-archive: and docker-archive: forms upload
    PUSH_REFERENCE = (
        "push-reference"  # where an image goes: a registry (its local forms stay local)
    )


class Capability(enum.Enum):
    """An operator switch a non-admin token may be granted (``token create --allow``)."""

    PRIVATE_EGRESS = "private-egress"
    HOST_SERVICES = "host-services"
    INSECURE_REGISTRY = "insecure-registry"
    PRIVATE_REGISTRY = "private-registry"


CAPABILITY_HELP = {
    Capability.PRIVATE_EGRESS: (
        "allow_private_egress: guests may reach loopback, link-local and private "
        "networks, and the server's own addresses"
    ),
    Capability.HOST_SERVICES: (
        "allow_host_services: guests may reach host.pyro.internal:PORT, the server's 127.0.0.1"
    ),
    Capability.INSECURE_REGISTRY: "insecure_registry: pull and push over plain HTTP",
    Capability.PRIVATE_REGISTRY: (
        "registry references (pull, FROM) that resolve to loopback, link-local or private "
        "addresses, the server's own included"
    ),
}


def capability(name: str) -> Capability:
    """The capability called ``name``.

    Raises:
        InvalidArgument: no such capability (the message lists them).
    """
    for known in Capability:
        if known.value == name:
            return known
    listed = ", ".join(c.value for c in Capability)
    raise InvalidArgument("allow", f"{name!r} is not a capability; there are: {listed}")


class Names(enum.Enum):
    """What an argument names in a namespace a server keeps per principal."""

    ENVIRONMENT = "environment"  # an environment the call uses (own first, then shared)
    NEW_ENVIRONMENT = "new-environment"  # an environment the call installs or replaces


# The annotations SDK signatures use.
ReadPath = Annotated[str | Path, Crossing.READ]
FolderPath = Annotated[str | Path, Crossing.FOLDER]
InsidePath = Annotated[str | Path, Crossing.INSIDE]
ProjectPath = Annotated[str | Path, Crossing.PROJECT]
WritePath = Annotated[str | Path, Crossing.WRITE]
DiskImagePath = Annotated[str | Path, Crossing.WRITE_DISK]
ImageReference = Annotated[str, Crossing.REFERENCE]
PushReference = Annotated[str, Crossing.PUSH_REFERENCE]
EnvironmentName = Annotated[str, Names.ENVIRONMENT]
NewEnvironmentName = Annotated[str, Names.NEW_ENVIRONMENT]
PrivateEgress = Annotated[bool, Capability.PRIVATE_EGRESS]
HostServices = Annotated[bool, Capability.HOST_SERVICES]
InsecureRegistry = Annotated[bool, Capability.INSECURE_REGISTRY]


@dataclass(frozen=True)
class Declared:
    """One method's declarations: argument name to crossing or capability, and the
    arguments whose type could name a path but that declare no crossing."""

    crossings: Mapping[str, Crossing]
    capabilities: Mapping[str, Capability]
    undeclared_paths: Sequence[str]
    parameters: Mapping[str, Any]
    names: Mapping[str, Names] = field(
        default_factory=dict
    )  # every argument, with its default (None when it has none)


_METHODS: dict[str, Callable[..., Any]] = {}


def register(name: str, method: Callable[..., Any]) -> None:
    """``method`` is what a transport runs as ``name`` (the SDK registers its own)."""
    _METHODS[name] = method


def of(name: str) -> Declared:
    """The declarations of the registered method ``name`` (none for an unknown one)."""
    method = _METHODS.get(name)
    if method is None:
        return Declared({}, {}, (), {})
    return declared(method)


def declared(method: Callable[..., Any]) -> Declared:
    """What ``method``'s signature declares (see the module docstring)."""
    return _declared(inspect.unwrap(method))


@functools.cache
def _declared(function: Callable[..., Any]) -> Declared:
    hints = typing.get_type_hints(function, include_extras=True)
    crossings: dict[str, Crossing] = {}
    capabilities: dict[str, Capability] = {}
    undeclared: list[str] = []
    parameters: dict[str, Any] = {}
    named: dict[str, Names] = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name == "self":
            continue
        empty = parameter.default is inspect.Parameter.empty
        parameters[name] = None if empty else parameter.default
        if name not in hints:
            continue
        marks = list(_marks(hints[name]))
        for mark in marks:
            if isinstance(mark, Crossing):
                crossings[name] = mark
            elif isinstance(mark, Capability):
                capabilities[name] = mark
            elif isinstance(mark, Names):
                named[name] = mark
        if name not in crossings and _mentions_path(hints[name]):
            undeclared.append(name)
    return Declared(crossings, capabilities, tuple(undeclared), parameters, named)


def _marks(hint: Any) -> Any:
    if typing.get_origin(hint) is Annotated:
        yield from hint.__metadata__
    for argument in typing.get_args(hint):
        yield from _marks(argument)


def _mentions_path(hint: Any) -> bool:
    if hint is Path or (isinstance(hint, type) and issubclass(hint, Path)):
        return True
    return any(_mentions_path(argument) for argument in typing.get_args(hint))


LOCAL_IMAGE_FORMS = ("oci:", "oci-archive:", "docker-archive:")


def local_image(reference: Any) -> str | None:
    """The transport of ``reference`` when it names an image on the caller's disk."""
    split = split_local_image(reference)
    return split[0] if split else None


def split_local_image(reference: Any) -> tuple[str, str, str] | None:
    """``(form, path, tag)`` of a local image reference (``oci:PATH[:TAG]``,
    ``oci-archive:FILE``, ``docker-archive:FILE``; tag "" when none), else None."""
    if not isinstance(reference, str):
        return None
    for prefix in LOCAL_IMAGE_FORMS:
        if reference.startswith(prefix):
            rest = reference.removeprefix(prefix)
            path, _, tag = rest.rpartition(":") if prefix == "oci:" else ("", "", "")
            if not path or not tag or "/" in tag:
                path, tag = rest, ""
            return prefix.rstrip(":"), path, tag
    return None
