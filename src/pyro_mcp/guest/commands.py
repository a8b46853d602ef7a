"""One command in the guest: argv or shell string, environment, bounded output,
timeout; plain commands run without a shell (standard library only)."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from typing import Any

try:
    from pyro_mcp.guest import fileops, processes
except ImportError:  # inside the guest, beside this file
    import fileops  # type: ignore[import-not-found,no-redef]
    import processes  # type: ignore[import-not-found,no-redef]

RequestError = fileops.RequestError


BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/sh",
    "LANG": "C.UTF-8",
}
processes.BASE_ENV = BASE_ENV  # one environment for commands, services and shells

# After the command exits, background children may keep its pipes open. Read
# what is already there, then stop instead of waiting for them.
DRAIN_AFTER_EXIT_SECONDS = 0.05


def op_exec(args: dict[str, Any]) -> dict[str, Any]:
    argv = _command_argv(args)
    env = dict(BASE_ENV)
    extra_env = args.get("env") or {}
    if not isinstance(extra_env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra_env.items()
    ):
        raise RequestError("bad_args", "env must map names to strings")
    env.update(extra_env)
    env.update(processes.secret_environment(args))
    cwd = args.get("cwd") or processes.DEFAULT_CWD
    if not isinstance(cwd, str) or not os.path.isdir(cwd):
        raise RequestError("bad_cwd", f"working directory {cwd!r} does not exist in the guest")
    timeout = float(args.get("timeout_seconds") or 30)
    limit = int(args.get("max_output_bytes") or 1024 * 1024)

    argv = _without_shell(argv, env)
    started = time.monotonic()
    process = processes.spawn(argv, cwd, env, merge_stderr=False)
    streams = _collect_output(process, timeout, limit)
    duration_ms = int((time.monotonic() - started) * 1000)
    code = process.returncode
    exit_code = 128 - code if code is not None and code < 0 else code
    return {
        "exit_code": 124 if streams.timed_out else exit_code,
        "stdout": base64.b64encode(streams.kept[0]).decode("ascii"),
        "stderr": base64.b64encode(streams.kept[1]).decode("ascii"),
        "stdout_bytes": streams.total[0],
        "stderr_bytes": streams.total[1],
        "timed_out": streams.timed_out,
        "duration_ms": duration_ms,
    }


class _Output:
    def __init__(self) -> None:
        self.kept = [bytearray(), bytearray()]
        self.total = [0, 0]
        self.timed_out = False


def _collect_output(process: subprocess.Popen[bytes], timeout: float, limit: int) -> _Output:
    """Read both pipes until the process ends, keeping at most ``limit`` each."""
    out = _Output()
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    assert process.stdout is not None and process.stderr is not None
    selector.register(process.stdout, selectors.EVENT_READ, 0)
    selector.register(process.stderr, selectors.EVENT_READ, 1)
    exited_at: float | None = None
    while selector.get_map():
        now = time.monotonic()
        if exited_at is None and process.poll() is not None:
            exited_at = now
        if exited_at is not None:
            wait = exited_at + DRAIN_AFTER_EXIT_SECONDS - now
            if wait <= 0:
                break
        else:
            wait = min(deadline - now, 0.1)
            if wait <= 0:
                out.timed_out = True
                _kill_group(process)
                exited_at = time.monotonic()
                continue
        for key, _ in selector.select(wait):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            index = key.data
            out.total[index] += len(chunk)
            room = limit - len(out.kept[index])
            if room > 0:
                out.kept[index] += chunk[:room]
    selector.close()
    process.stdout.close()
    process.stderr.close()
    if process.poll() is None:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            out.timed_out = True
            _kill_group(process)
            process.wait()
    return out


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGKILL)


# A shell command made only of plain words (no quoting, expansion, redirection,
# operators or assignments) means the same run without the shell: it saves a
# /bin/sh spawn (~9 ms under TCG) on the commands agents run most.
_PLAIN_COMMAND = re.compile(r"[A-Za-z0-9_./:,+@%-]+(?: +[A-Za-z0-9_./:,+@%=-]+)*")
# Builtins of dash whose binaries behave differently (echo -e, kill %1, ...).
_SHELL_BUILTINS = frozenset({"echo", "printf", "test", "[", "kill", "pwd", "time"})


def _without_shell(argv: list[str], env: dict[str, str]) -> list[str]:
    """``/bin/sh -c WORDS`` as WORDS when the shell adds nothing; else ``argv``."""
    if len(argv) != 3 or argv[:2] != ["/bin/sh", "-c"]:
        return argv
    command = argv[2].strip(" ")
    if not _PLAIN_COMMAND.fullmatch(command):
        return argv
    words = command.split()
    if words[0] in _SHELL_BUILTINS or "/" in words[0]:
        return argv  # a path is looked up in the command's cwd, not ours
    program = shutil.which(words[0], path=env.get("PATH"))
    return [program, *words[1:]] if program else argv


def _command_argv(args: dict[str, Any]) -> list[str]:
    argv = args.get("argv")
    shell = args.get("shell")
    if isinstance(shell, str) and shell:
        return ["/bin/sh", "-c", shell]
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return argv
    raise RequestError("bad_args", "exec needs a non-empty argv list or a shell string")
