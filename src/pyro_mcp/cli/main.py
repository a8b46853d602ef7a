"""``pyro``: the command line. Parses, calls the SDK, renders.

Errors are caught once, here: a ``PyroError`` is printed to stderr and the
process exits non-zero; commands never call ``sys.exit`` themselves.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pyro_mcp.cli import client, doctor, env, host, mcp, prepare, run, server, vm, workspace
from pyro_mcp.errors import InvalidArgument, PyroError
from pyro_mcp.hosts.server_command import pyro_launcher
from pyro_mcp.version import __version__

EPILOG = """\
examples:
  pyro doctor                                  can this host run guests?
  pyro env pull debian:12                      build the default environment
  pyro prepare                                 warm snapshot: sub-second create and reset
  pyro run debian:12 -- git --version          one command in a fresh microVM
  pyro run debian:12 --json -- sh -c 'exit 3'  structured result, exit code 3
  pyro demo                                    create, start, exec, delete
  pyro host connect claude-code                use pyro from Claude Code (also codex, opencode)
  pyro --remote https://kvm-box:8787 workspace list
                                               the same commands against a `pyro server`
                                               (token in PYRO_TOKEN)

Every command takes --json. State lives under PYRO_HOME (default
~/.local/share/pyro), environments under PYRO_CACHE_DIR (default ~/.cache/pyro).

zero to hero:
  1. pyro doctor
  2. pyro env list
  3. pyro env pull debian:12
  4. pyro run debian:12 -- git --version
  5. pyro mcp serve                            (what a chat host starts)
  6. claude mcp add pyro -- {command}
     codex mcp add pyro -- {command}
     (or `pyro host connect claude-code|codex`, which writes these and checks them)
"""


class Parser(argparse.ArgumentParser):
    """An argument parser whose leaf commands take positionals anywhere.

    Plain ``parse_args`` binds an optional positional the moment it meets the
    first positional run, so ``pyro env build app:1 --file F ./service`` left
    ``./service`` over. A command without subcommands parses intermixed
    (positionals after options too); one with subcommands cannot, and parses
    as usual. ``_intermixing`` guards against the intermixed parse calling
    back into this method (it does, on Python 3.11 and 3.12).
    """

    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        nested = any(
            action.nargs in (argparse.PARSER, argparse.REMAINDER)
            for action in self._get_positional_actions()
        )
        if nested or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pyro",
        description="Disposable microVM sandboxes for coding agents.",
        epilog=EPILOG.format(command=" ".join([*pyro_launcher(), "mcp", "serve"])),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pyro {__version__}")
    parser.add_argument(
        "--remote",
        metavar="URL",
        help="run every command on the `pyro server` at URL (default: PYRO_REMOTE); "
        "the token comes from PYRO_TOKEN, a private CA from PYRO_REMOTE_CA",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run.register(commands)
    doctor.register(commands)
    prepare.register(commands)
    env.register(commands)
    vm.register(commands)
    workspace.register(commands)
    mcp.register(commands)
    host.register(commands)
    server.register(commands)
    return parser


def parse(parser: argparse.ArgumentParser, words: Sequence[str]) -> argparse.Namespace:
    """``words`` (a command line without ``pyro``) as the command's arguments.

    Everything after the first ``--`` is the guest command, verbatim: options
    such as --json must still be ours when they come before it.
    """
    words = list(words)
    command: list[str] = []
    if "--" in words:
        split = words.index("--")
        words, command = words[:split], words[split + 1 :]
    args = parser.parse_args(words)
    if hasattr(args, "cmd"):
        args.cmd = list(args.cmd) + command
    elif command:
        parser.error(
            "`--` and a command only go with run, vm exec, workspace exec and service start"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, sys.argv[1:] if argv is None else argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        client.configure(args.remote)
        code = int(handler(args))
        sys.stdout.flush()  # a reader that went away shows up here, not at exit
        return code
    except BrokenPipeError:
        # `pyro doctor | head -3`: the reader has what it wanted. Quiet, like
        # any Unix tool killed by SIGPIPE (status 141), and no flush error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    except InvalidArgument as exc:
        print(f"pyro: invalid argument: {exc}", file=sys.stderr)
        return 2
    except PyroError as exc:
        print(f"pyro: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
