"""The one exception tree of pyro.

Every error a caller of the SDK, the CLI or the MCP server can see is a
``PyroError``. Messages are written for the person or model reading them: they
name what went wrong, the evidence, and the next step.

::

    PyroError
     +-- NotFound                  unknown environment, VM or workspace
     +-- InvalidArgument           a bad value for a named field
     +-- StateError                an operation the current lifecycle state forbids
 +-- PatchConflict             a patch hunk does not match; nothing was changed
     +-- HostSetupError            a host tool or capability is missing
     +-- EnvironmentBuildError     building or repairing an environment failed
     +-- StoreError                the state database could not be used
     +-- VMError                   QEMU failed to start, or the guest died
     +-- QuotaExceeded             a server token's limit (running workspaces, disk) is reached
     +-- RemoteError               a pyro server could not be reached, refused the
                                   token, or runs another version
     +-- AgentError                the guest agent failed a request
          +-- AgentTimeout         no answer within the bound
          +-- AgentProtocolError   the guest sent something malformed
"""

from __future__ import annotations


class PyroError(Exception):
    """Base of every error pyro raises on purpose."""


class NotFound(PyroError):
    """An environment, VM or workspace that does not exist."""


class InvalidArgument(PyroError):
    """A value that pyro cannot accept; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class StateError(PyroError):
    """An operation that the object's current state does not allow."""

    def __init__(self, what: str, state: str, required: str, fix: str) -> None:
        super().__init__(f"{what} is {state}; this needs it {required}. {fix}")
        self.state = state
        self.required = required


class PatchConflict(PyroError):
    """A hunk whose context does not match the file; nothing was changed."""


class HostSetupError(PyroError):
    """The host lacks a tool or capability pyro needs."""


class EnvironmentBuildError(PyroError):
    """Building an environment image failed."""


class StoreError(PyroError):
    """The state database could not be read or written."""


class VMError(PyroError):
    """QEMU could not start the guest, or the guest died."""


class AgentError(PyroError):
    """The guest agent reported a failure or could not be reached."""


class AgentTimeout(AgentError):
    """The guest agent did not answer within the bound."""


class AgentProtocolError(AgentError):
    """The guest sent a frame or message that breaks the protocol."""


class QuotaExceeded(PyroError):
    """A ``pyro server`` token's limit is reached; the message names the limit."""


class RemoteError(PyroError):
    """A ``pyro server`` could not be reached, refused the token, or runs another version."""
