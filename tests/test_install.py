"""The install route: the wheel `make dist` builds, installed into a clean venv."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_into_a_clean_venv_and_pyro_doctor_runs(tmp_path: Path) -> None:
    uv = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    built = subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("pyro_mcp-*.whl")
    # The locked versions of its dependencies (from uv's cache, as `make test` left it).
    pins = tmp_path / "pins.txt"
    exported = subprocess.run(
        [uv, "export", "--no-dev", "--no-emit-project", "--no-hashes", "-o", str(pins)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), "-r", str(pins), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    version = subprocess.run(
        [str(venv / "bin" / "pyro"), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("pyro ")
    doctor = subprocess.run(
        [str(venv / "bin" / "pyro"), "doctor", "--platform", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert doctor.returncode in (0, 1), doctor.stderr[-2000:]
    assert json.loads(doctor.stdout)["platform"]["python"]
    # The guest side travels in the wheel: the init script and the agent.
    files = subprocess.run(
        [
            str(python),
            "-c",
            "import pyro_mcp, pathlib; print(pathlib.Path(pyro_mcp.__file__).parent)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    package = Path(files.stdout.strip())
    assert (package / "guest" / "init.sh").is_file() and (package / "guest" / "agent.py").is_file()
    assert str(package).startswith(str(venv))  # the wheel's copy, not this checkout
