"""The documented form of every id and name a surface takes, checked in one place.

Ids and names reach the state directory as path components and the guest as
arguments, so each is checked against its form before it is used: a NUL byte,
a path separator, ``..`` or a 5,000-character value gets an error naming the
form, never an ``OSError`` from the filesystem.
"""

from __future__ import annotations

import re
from typing import Any

from pyro_mcp.errors import InvalidArgument, NotFound

MAX_NAME = 64
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_FORM = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
VM_ID = re.compile(r"^vm-[0-9a-f]{12}$")
WORKSPACE_ID = re.compile(r"^ws-[0-9a-f]{12}$")
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")
ENVIRONMENT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}(:[a-z0-9][a-z0-9._-]{0,62})?$")
ENVIRONMENT_FORM = (
    "lower-case letters, digits, '.', '_' and '-' (up to 63), with an optional ':tag' "
    "(for example debian:12 or node:22)"
)


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as an error message may quote it: repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


def check_environment(field: str, value: Any) -> str:
    """An environment name (curated, pulled, built or saved).

    Raises:
        InvalidArgument: ``value`` is not of the environment name form.
    """
    if not isinstance(value, str) or not ENVIRONMENT.fullmatch(value):
        raise InvalidArgument(
            field, f"{shown(value)} is not an environment name: use {ENVIRONMENT_FORM}"
        )
    return value


def check_name(field: str, value: Any) -> str:
    """A workspace, snapshot or service name.

    Raises:
        InvalidArgument: ``value`` is not of the name form.
    """
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise InvalidArgument(field, f"{shown(value)} is not a valid name: use {NAME_FORM}")
    return value


def check_workspace_ref(value: Any) -> str:
    """A workspace id (``ws-`` and 12 hex digits) or name.

    Raises:
        NotFound: ``value`` cannot name a workspace; the message gives both forms.
    """
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise NotFound(
            f"no workspace {shown(value)}: a workspace is named by its id (ws- and 12 hex "
            f"digits) or its name ({NAME_FORM}); see `pyro workspace list`"
        )
    return value


def check_vm_id(value: Any) -> str:
    """A VM id (``vm-`` and 12 hex digits).

    Raises:
        NotFound: ``value`` cannot be a VM id; the message gives the form.
    """
    if not isinstance(value, str) or not VM_ID.fullmatch(value):
        raise NotFound(
            f"no VM {shown(value)}: VM ids are vm- and 12 hex digits; see `pyro vm list`"
        )
    return value
