"""Runs the real `pyro` CLI in a subprocess."""

from __future__ import annotations

import subprocess
import sys


def pyro_cli(
    env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyro_mcp.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
