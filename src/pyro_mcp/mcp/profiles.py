"""Which tools a server exposes: profiles (how much) and modes (for which job).

A profile is a tool set by breadth. A mode is a narrower set for one use case,
with descriptions that say how to use each tool for that job. Every mode
includes the lifecycle tools a conversation needs to begin and end.
"""

from __future__ import annotations

from pyro_mcp.errors import InvalidArgument

VM_RUN = ("vm_run",)

WORKSPACE_CORE = (
    "vm_run",
    "workspace_create",
    "workspace_delete",
    "workspace_diff",
    "workspace_exec",
    "workspace_export",
    "workspace_file_list",
    "workspace_file_read",
    "workspace_file_write",
    "workspace_list",
    "workspace_logs",
    "workspace_patch_apply",
    "workspace_reset",
    "workspace_summary",
    "workspace_status",
    "workspace_sync_push",
    "workspace_update",
)

SHELLS = ("shell_close", "shell_open", "shell_read", "shell_signal", "shell_write")
SERVICES = ("service_list", "service_logs", "service_start", "service_status", "service_stop")
SNAPSHOTS = ("snapshot_create", "snapshot_delete", "snapshot_list")
DISK = ("workspace_disk_export", "workspace_disk_list", "workspace_disk_read")
RAW_VMS = (
    "vm_create",
    "vm_delete",
    "vm_exec",
    "vm_list",
    "vm_list_environments",
    "vm_network_info",
    "vm_reap_expired",
    "vm_start",
    "vm_status",
    "vm_stop",
)

WORKSPACE_FULL = (
    *WORKSPACE_CORE,
    *SHELLS,
    *SERVICES,
    *SNAPSHOTS,
    *DISK,
    "workspace_fork",
    "workspace_start",
    "workspace_stop",
    *RAW_VMS,
)

PROFILES: dict[str, tuple[str, ...]] = {
    "vm-run": VM_RUN,
    "workspace-core": WORKSPACE_CORE,
    "workspace-full": WORKSPACE_FULL,
}
DEFAULT_PROFILE = "workspace-core"

# What every mode has: start, look at, rename, read the journal of, and end a
# workspace, and run commands in it (the pyro-mcp 4.5 contract).
LIFECYCLE = (
    "workspace_create",
    "workspace_delete",
    "workspace_exec",
    "workspace_export",
    "workspace_list",
    "workspace_logs",
    "workspace_summary",
    "workspace_status",
    "workspace_update",
)

MODES: dict[str, tuple[str, ...]] = {
    "repro-fix": tuple(name for name in WORKSPACE_CORE if name != "vm_run"),
    "inspect": (*LIFECYCLE, "workspace_file_list", "workspace_file_read"),
    "cold-start": (
        *LIFECYCLE,
        "workspace_file_list",
        "workspace_file_read",
        "workspace_reset",
        *SERVICES,
    ),
    "review-eval": (
        *LIFECYCLE,
        "workspace_diff",
        "workspace_fork",
        "workspace_file_list",
        "workspace_file_read",
        "workspace_reset",
        *SHELLS,
        *SNAPSHOTS,
    ),
}

MODE_PURPOSE: dict[str, str] = {
    "repro-fix": "reproduce a failure, fix it with file edits or patches, prove the fix, hand it back",
    "inspect": "look around a project and run read-only checks; nothing in /workspace is changed",
    "cold-start": "set a project up from nothing (install, build, first run) and report what it took",
    "review-eval": "review or evaluate a change: see the diff, reset to try again, export results",
}


# A mode's recommended default environment, used when neither --environment nor
# a prepared project environment names one: setting a project up from nothing
# wants compilers and headers.
MODE_ENVIRONMENT: dict[str, str] = {"cold-start": "debian:12-build"}

# Which modes suit which chat host (shown by `host connect --help`, `host doctor`
# and the docs): Claude Code's long sessions set up and review; Codex's
# task-sized threads reproduce and fix, or look around.
HOST_MODES: dict[str, tuple[str, ...]] = {
    "claude-code": ("cold-start", "review-eval"),
    "codex": ("repro-fix", "inspect"),
}


def recommended_environment(
    mode: str | None, environment: str, note: str, default: str
) -> tuple[str, str]:
    """``(environment, note)`` with the mode's recommendation in place of pyro's
    ``default`` (a project's own environment stays)."""
    wanted = MODE_ENVIRONMENT.get(mode or "")
    if wanted is None or environment != default:
        return environment, note
    return wanted, f"recommended by mode {mode}" + (f"; {note}" if note else "")


def tool_names(profile: str | None, mode: str | None) -> tuple[str, ...]:
    """The tools a server with this profile or mode exposes.

    Raises:
        InvalidArgument: an unknown profile or mode (the message lists the valid ones),
            or both at once: a mode is a tool set of its own, not a filter on a profile.
    """
    if mode is not None and profile is not None:
        raise InvalidArgument(
            "mode", "give a mode or a profile, not both: a mode is its own narrower tool set"
        )
    if mode is not None:
        if mode not in MODES:
            raise InvalidArgument("mode", f"{mode!r} is not one of {', '.join(MODES)}")
        return MODES[mode]
    chosen = profile or DEFAULT_PROFILE
    if chosen not in PROFILES:
        raise InvalidArgument("profile", f"{chosen!r} is not one of {', '.join(PROFILES)}")
    return PROFILES[chosen]


# ------------------------------------------------------------ descriptions

DESCRIPTIONS: dict[str, str] = {
    "vm_run": (
        "Run one shell command in a brand-new disposable Linux microVM (Debian 12) and delete "
        "the VM afterwards. Use it for a quick, isolated check that needs no files from the "
        "project; for anything that takes several steps, create a workspace instead. Returns "
        "exit_code, stdout, stderr (each at most 1 MiB, truncated flags say when cut), "
        "timed_out and duration_ms. The VM starts in under a second when the environment "
        "is prepared (boot_kind warm), a few seconds otherwise (cold)."
    ),
    "workspace_create": (
        "Create a sandbox workspace: a Linux microVM whose /workspace holds a copy of the "
        "project (by default the Git-tracked files of the project this server was started "
        "in). Call it once at the start, then use the returned workspace_id with the other "
        "workspace tools. Nothing you do in it touches the user's machine. Returns "
        "workspace_id, state, origin_kind/origin_ref (where the files came from) and seed "
        "counts."
    ),
    "workspace_list": "List workspaces (id, name, labels, state, last activity, expiry), most recent first.",
    "workspace_update": "Rename a workspace or change its labels (labels to set, clear_labels to remove), how long it may sit idle, and (workspace-full) the hosts its network may reach.",
    "workspace_status": (
        "State of one workspace: running or stopped (with last_error when its VM died), "
        "origin of its files, seed counts, number of commands run, expiry."
    ),
    "workspace_exec": (
        "Run a shell command inside the workspace, in /workspace (or cwd, relative to it), "
        "like typing it in a terminal: build, test, grep, git, install packages. Returns "
        "exit_code, stdout, stderr (each at most 1 MiB), timed_out. Prefer the file tools "
        "over shell quoting to read or change files. Commands past timeout_seconds are killed "
        "and the workspace stays usable."
    ),
    "workspace_logs": "The journal of commands run in the workspace: command, cwd, exit code, duration, output.",
    "workspace_fork": (
        "Copy a running workspace as it is now into count new workspaces: /workspace, "
        "installed packages and running processes (services, shells) included. Use it to "
        "try several fixes or evaluations from one prepared state. Each fork has its own "
        "disks, memory, machine identity and host ports; the source keeps running."
    ),
    "workspace_summary": (
        "What happened since the workspace was created or last reset: commands with exit "
        "codes, file writes, patches, syncs, exports, and the files changed. Short enough to "
        "paste into a reply."
    ),
    "workspace_sync_push": (
        "Copy a directory or .tar/.tgz from the user's machine into /workspace (at dest). "
        "Only paths the server allows can be read."
    ),
    "workspace_file_list": "List files under a /workspace directory (recursive optional): path, type, size, mode.",
    "workspace_file_read": (
        "Read a file under /workspace. Returns its text (content); binary files come back as "
        "binary=true with content_base64. max_bytes bounds the answer (truncated says when "
        "cut). Use this instead of `cat` through workspace_exec."
    ),
    "workspace_file_write": (
        "Create or replace a file under /workspace with the given text (parents are created, "
        "an existing file keeps its mode). Use this instead of shell redirection or heredocs."
    ),
    "workspace_patch_apply": (
        "Apply a unified diff (as git diff or diff -u write it; paths relative to /workspace, "
        "a/ b/ prefixes fine) to the workspace. Every hunk is checked before anything "
        "changes: on a mismatch nothing is modified and the error shows the file, the hunk, "
        "and the expected versus actual lines. Prefer this for edits to existing files."
    ),
    "workspace_diff": (
        "Everything that changed in /workspace since it was created: a list of changed paths "
        "(added, modified, deleted, mode or type changes, binary flag) and a unified patch."
    ),
    "workspace_export": (
        "Copy a file or directory from /workspace to the user's machine at output, a new path "
        "inside the project (or a directory the user allowed). Never overwrites an existing "
        "file and never writes through a symlink: pick a fresh output path."
    ),
    "workspace_reset": (
        "Throw the sandbox away and start again from the files it was created with (or from a "
        "named snapshot): processes, shells, services, installed packages, /tmp and later "
        "changes in /workspace are gone. The workspace_id stays."
    ),
    "workspace_delete": "Delete the workspace and its disks. Call it when the task is finished.",
    "workspace_stop": (
        "Suspend the workspace: its memory is saved and its VM stops using the host's; "
        "workspace_start (or any later call) resumes every process as it was. "
        "discard_memory: stop instead (files kept, processes end)."
    ),
    "workspace_start": "Resume a suspended workspace, or boot a stopped one with /workspace intact.",
    "shell_open": "Open an interactive bash on a real terminal (PTY) inside the workspace, for programs that need one: REPLs, debuggers, curses tools, anything that asks questions. For one-off commands prefer workspace_exec. Returns shell_id; the shell lives until shell_close, reset or delete.",
    "shell_write": "Type input into a shell (Enter is pressed after it unless append_newline=false). Then call shell_read to see what happened.",
    "shell_read": "Read a shell's output from cursor on (omit cursor for everything still kept; pass next_cursor from the last read to continue). plain=true (default) strips colours and applies carriage returns so the text reads like the screen; wait_for_idle_ms waits until the output has been quiet that long (bounded by max_wait_ms), which is how to wait for a command to finish. missed_bytes > 0 means older output left the 1 MiB buffer.",
    "shell_signal": "Send a signal (INT like Ctrl-C, TERM, KILL, HUP, QUIT) to the program running in the foreground of a shell.",
    "shell_close": "Close a shell and end everything it started.",
    "service_start": "Start a named long-running process (a dev server, a database, a worker) and wait until it is ready: ready_http (URL answers 2xx/3xx), ready_tcp (HOST:PORT accepts), ready_file (path appears) or ready_command (exits 0). Returns state ready, or failed with the reason (the process is stopped), or exited with its exit code. published_ports ([HOST_PORT:]GUEST_PORT) makes a port reachable on the user's machine at 127.0.0.1, if the workspace was created with network_policy egress+published-ports.",
    "service_list": "List the workspace's services with state (starting, running, failed, exited, stopped), exit code and published ports.",
    "service_status": "One service's state, exit code, failure reason and published ports.",
    "service_logs": "A service's output (stdout and stderr), the last tail_lines lines or all; kept outside /workspace so it never shows in diffs or exports.",
    "service_stop": "Stop a service (TERM, then KILL) and withdraw its published ports.",
    "snapshot_create": "Save the current /workspace under a name (a checkpoint), consistently even while commands run. Use it before a risky change; workspace_reset with snapshot=NAME goes back to it.",
    "snapshot_list": "List the workspace's snapshots: baseline (the files it was created with, reserved) and the named ones.",
    "snapshot_delete": "Delete a named snapshot (baseline cannot be deleted).",
    "workspace_disk_export": "Write a stopped workspace's /workspace as a raw ext4 image to a new host path (inside the project or an allowed directory). Needs workspace_stop first.",
    "workspace_disk_list": "List files of a stopped workspace's /workspace without booting it (for a running one use workspace_file_list).",
    "workspace_disk_read": "Read a file of a stopped workspace's /workspace without booting it (for a running one use workspace_file_read).",
    "vm_create": "Create a raw VM (not booted yet) from an environment. Lower level than workspaces: no /workspace, no file tools, no journal; prefer workspace_create unless you need a bare machine. Returns vm_id and state.",
    "vm_start": "Boot a raw VM made with vm_create (or stopped with vm_stop) and wait until it answers. Returns the VM record with state running and accel (kvm or tcg).",
    "vm_exec": "Run one shell command in a running raw VM (cwd /root), then delete the VM unless keep_vm is true. Returns exit_code, stdout, stderr (each at most 1 MiB), timed_out, duration_ms, cleanup.",
    "vm_stop": "Stop a raw VM, keeping its root disk so vm_start can boot it again with its files intact.",
    "vm_delete": "Delete a raw VM and its disk. Call it when you are done with a VM from vm_create.",
    "vm_status": "State of a raw VM (created, running or stopped, with last_error when it died on its own).",
    "vm_list": "List raw VMs made with vm_create: vm_id, environment, state. Workspaces have their own list.",
    "vm_list_environments": "List the environments workspaces and VMs can use: the curated ones (debian:12-base, debian:12 with git, debian:12-build with compilers) and any the operator pulled from an OCI image (kind image, with its source reference), and whether each is installed on this host. Use it to pick the environment argument of workspace_create or vm_run.",
    "vm_network_info": "Say how a raw VM reaches the network: no NIC at all, or egress only through pyro's proxy (its address, the guest's address).",
    "vm_reap_expired": "Delete raw VMs whose ttl_seconds has passed and one-shot VMs whose caller died. Returns the reaped vm_ids.",
}

MODE_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "repro-fix": {
        "workspace_exec": (
            "Run the failing test or the command that reproduces the bug inside /workspace, and "
            "run it again after the fix to prove it. Returns exit_code, stdout, stderr, timed_out."
        ),
        "workspace_patch_apply": (
            "Apply the fix as a unified diff. All hunks are checked first; on a mismatch nothing "
            "changes and the error shows expected versus actual lines, so re-read the file and retry."
        ),
        "workspace_diff": "The complete fix so far, as a unified patch against the original files.",
        "workspace_export": "Hand fixed files back to the user's machine (output path on the host).",
    },
    "inspect": {
        "workspace_exec": (
            "Run read-only commands (grep, ls, git log, test runs that write nothing important) "
            "in /workspace to answer questions about the project."
        ),
        "workspace_file_read": "Read a project file under /workspace (text, bounded by max_bytes).",
    },
    "cold-start": {
        "service_start": "Start the project's server or daemon the way a new developer would and wait until it answers (ready_http/ready_tcp/ready_file/ready_command); a failed start returns the reason, then read service_logs.",
        "workspace_exec": (
            "Run setup steps from a clean machine (install dependencies, build, start the first "
            "run) and note what each step needed. Returns exit_code, stdout, stderr, timed_out."
        ),
        "workspace_reset": "Start the set-up again from a clean machine with the original files.",
    },
    "review-eval": {
        "shell_open": "Open an interactive terminal to try the change by hand (REPL, CLI prompts); read it with shell_read.",
        "workspace_diff": "The change under review as a unified patch plus the list of changed files.",
        "workspace_reset": "Discard everything and return to the original files, to evaluate again.",
    },
}


def describe(tool: str, mode: str | None) -> str:
    """The description of ``tool``, specialised for ``mode`` where it has one."""
    base = MODE_DESCRIPTIONS.get(mode or "", {}).get(tool, DESCRIPTIONS[tool])
    if mode is not None and tool == "workspace_create":
        base += f" This server is in {mode} mode: {MODE_PURPOSE[mode]}."
    return base
