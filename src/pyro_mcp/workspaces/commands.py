"""Commands in a workspace: one exec, one guest round trip, journalled and redacted once."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pyro_mcp import config
from pyro_mcp.agent import operations as guest
from pyro_mcp.errors import PyroError, StoreError
from pyro_mcp.vm.commands import describe_command, exec_args, exec_result
from pyro_mcp.workspaces import secrets as secret_store
from pyro_mcp.workspaces.context import WorkspaceContext, expiry_warning
from pyro_mcp.workspaces.paths import resolve_workspace_path

JOURNAL_OUTPUT_BYTES = 64 * 1024


class CommandOps:
    def __init__(self, ctx: WorkspaceContext) -> None:
        self.ctx = ctx

    def run(
        self,
        ref: str,
        command: str | Sequence[str],
        *,
        timeout_seconds: float = config.DEFAULT_TIMEOUT_SECONDS,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        secret_env: Sequence[str] | Mapping[str, str] = (),
    ) -> dict[str, Any]:
        """Run a command in ``/workspace`` (or ``cwd`` under it); journal it.

        One workspace read, one VM reconcile, one guest round trip (the
        /workspace check rides along with the command), one journal write.
        """
        workspace = self.ctx.find(ref)
        secrets = self.ctx.secrets(workspace)
        secret_vars = self.ctx.secret_env(workspace, secret_env, known=secrets)
        guest_cwd = str(resolve_workspace_path(cwd or "."))
        args = exec_args(command, timeout_seconds, env, guest_cwd, secret_vars)
        started = time.time()
        try:
            # Touched when the command ends, not before: a long command must not
            # leave the workspace looking idle the moment it finishes.
            with self.ctx.connect(workspace, touch=False) as client:
                reply, repaired = self.ctx.checked_write(
                    client,
                    workspace,
                    lambda check: self.ctx.vms.exec_reply(
                        workspace["vm_id"], client, {**args, "check_workspace": check}
                    ),
                    strict=False,
                )
                result = exec_result(reply)
                if config.space_is_low(self.ctx.vms.paths.state_dir):
                    # The command may have deleted files: hand their blocks back to
                    # the host now, whatever the guest's discards did on a full disk.
                    with contextlib.suppress(PyroError):
                        guest.trim(client)
        finally:
            workspace = self.ctx.touch(workspace)
        redact = secret_store.Redactor(secrets)
        data = result.to_dict()
        data["stdout"], data["stderr"] = (
            redact.redact_text(data["stdout"]),
            redact.redact_text(data["stderr"]),
        )
        entry = {
            "command": redact.redact_text(describe_command(command)),
            "cwd": guest_cwd,
            "exit_code": result.exit_code,
            "duration_ms": result.duration_ms,
            "timed_out": result.timed_out,
            **bounded("stdout", data["stdout"], result.stdout_truncated),
            **bounded("stderr", data["stderr"], result.stderr_truncated),
        }
        warnings = [repaired] if repaired else []
        try:
            self.ctx.store.add_journal(workspace["workspace_id"], "exec", started, entry)
        except StoreError as exc:
            # The command ran: its output matters more than its journal entry.
            warnings.append(f"this command was not journalled: {exc}")
        warnings.extend(expiry_warning(workspace).values())
        joined = {"warning": "; ".join(warnings)} if warnings else {}
        return {"workspace_id": workspace["workspace_id"], **data, **joined}


def bounded(name: str, text: str, truncated: bool) -> dict[str, Any]:
    data = text.encode("utf-8", errors="replace")
    kept = data[:JOURNAL_OUTPUT_BYTES].decode("utf-8", errors="ignore")
    return {name: kept, f"{name}_truncated": truncated or len(data) > JOURNAL_OUTPUT_BYTES}
