"""The README's recorded walkthroughs: made by `make walkthrough` from a real
run (scripts/record_walkthrough.py), embedded in the README, and the recorder
itself works end to end (a short session recorded and rendered here)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "docs" / "assets"


def _recorder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "record_walkthrough", ROOT / "scripts" / "record_walkthrough.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def _events(cast: Path) -> tuple[dict, list[list]]:
    lines = cast.read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def test_each_walkthrough_is_a_recording_of_its_commands_and_is_in_the_readme() -> None:
    recorder = _recorder()
    readme = (ROOT / "README.md").read_text()
    for name, commands in recorder.WALKTHROUGHS.items():
        header, events = _events(ASSETS / f"walkthrough-{name}.cast")
        assert header["version"] == 2 and header["width"] == recorder.WIDTH
        times = [event[0] for event in events]
        assert times == sorted(times)
        screen = "".join(event[2] for event in events).replace("\r\n", "\n")
        where = 0
        for command in commands:  # typed in order, each followed by what it printed
            where = screen.index(f"$\x1b[0m {command}\n", where) + 1
        assert screen.count("# took ") == len(commands)
        svg = (ASSETS / f"walkthrough-{name}.svg").read_text()
        assert svg.startswith("<svg") and "</svg>" in svg
        assert f"(docs/assets/walkthrough-{name}.svg)" in readme


def test_the_recorder_records_a_real_session_and_renders_it(tmp_path: Path) -> None:
    recorder = _recorder()
    assert recorder.SVG_TERM.exists(), "tools/svg-term is not installed: run `make svg-term`"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    workdir = recorder.project(tmp_path / "project")
    cast = recorder.record("check", ["pyro --version", "git log --oneline"], workdir, env)
    path = tmp_path / "check.cast"
    path.write_text(cast.dump())
    recorder.render(path, tmp_path / "check.svg")
    _, events = _events(path)
    screen = "".join(event[2] for event in events)
    assert "pyro 0." in screen and "init" in screen
    assert (tmp_path / "check.svg").read_text().startswith("<svg")
