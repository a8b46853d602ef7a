"""Record the README's terminal walkthroughs from a real run, and render them.

Each walkthrough is a list of shell commands. They run for real, one after
another, in a scratch project with its own PYRO_HOME (the environment cache is
shared, as on any machine that ran `make demo`); what each prints is written
with the time it took into an asciicast v2 file, which svg-term-cli (pinned in
tools/svg-term) renders as an animated SVG:

    make walkthrough          # docs/assets/walkthrough-*.cast and *.svg

Long waits are shortened to MAX_PAUSE seconds in the recording (the cast
keeps each command's real duration in its `# took` line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "docs" / "assets"
SVG_TERM = REPO / "tools" / "svg-term" / "node_modules" / ".bin" / "svg-term"
WIDTH, HEIGHT = 100, 28
TYPING = 0.035  # seconds per typed character
MAX_PAUSE = 2.0
PROMPT = "\x1b[32m$\x1b[0m "

APP = "def add(a, b):\n    return a - b\n"
TEST = "python3 -c 'from app import add; assert add(2, 3) == 5' && echo tests pass\n"
FIX = (
    "--- a/app.py\n+++ b/app.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n"
    "-    return a - b\n+    return a + b\n"
)

WALKTHROUGHS: dict[str, list[str]] = {
    "first-run": [
        "pyro doctor --platform",
        "pyro env list",
        "pyro env pull debian:12",
        "pyro prepare debian:12",
        "pyro run debian:12 -- git --version",
        "pyro demo",
    ],
    "workspace-loop": [
        "WS=$(pyro workspace create --project-path . --name loop --id-only)",
        "pyro workspace exec $WS -- sh test.sh",
        "pyro workspace snapshot create $WS before-fix",
        "pyro workspace patch apply $WS --patch-file fix.patch",
        "pyro workspace exec $WS -- sh test.sh",
        "pyro workspace diff $WS",
        "pyro workspace export $WS app.py --output fixed/app.py",
        "pyro workspace reset $WS --snapshot before-fix",
        "pyro workspace summary $WS",
        "pyro workspace delete $WS",
    ],
}


@dataclass
class Cast:
    """An asciicast v2 recording being written."""

    title: str
    events: list[tuple[float, str]] = field(default_factory=list)
    clock: float = 0.0

    def out(self, text: str, after: float = 0.0) -> None:
        self.clock += after
        self.events.append((round(self.clock, 3), text.replace("\n", "\r\n")))

    def dump(self) -> str:
        header = {"version": 2, "width": WIDTH, "height": HEIGHT, "title": self.title}
        lines = [json.dumps(header)]
        lines += [json.dumps([at, "o", text]) for at, text in self.events]
        return "\n".join(lines) + "\n"


def record(name: str, commands: list[str], workdir: Path, env: dict[str, str]) -> Cast:
    """Run ``commands`` in one shell session (variables carry over) and record them."""
    cast = Cast(f"pyro: {name}")
    shell = subprocess.Popen(
        ["bash", "--norc", "--noprofile"],
        cwd=workdir,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert shell.stdin is not None and shell.stdout is not None
    try:
        for command in commands:
            cast.out(PROMPT, 0.6)
            for char in command:
                cast.out(char, TYPING)
            cast.out("\n", 0.3)
            marker = f"__pyro_walkthrough_done_{time.monotonic_ns()}"
            started = time.monotonic()
            shell.stdin.write(f"{command}\necho {marker} $?\n")
            shell.stdin.flush()
            last = started
            while True:
                line = shell.stdout.readline()
                if not line:
                    raise SystemExit(f"the shell ended during: {command}")
                if line.startswith(marker):
                    status = int(line.split()[1])
                    break
                now = time.monotonic()
                cast.out(line, min(now - last, MAX_PAUSE))
                last = now
            took = time.monotonic() - started
            if status != 0 and "exec $WS -- sh test.sh" not in command:
                raise SystemExit(f"`{command}` failed ({status}); the walkthrough needs it to pass")
            cast.out(f"\x1b[2m# took {took:.1f} s\x1b[0m\n", min(time.monotonic() - last, 0.5))
        cast.out("", 3.0)  # the last screen stays a moment before the loop restarts
    finally:
        shell.stdin.close()
        shell.wait(timeout=60)
        shell.stdout.close()
    return cast


def project(root: Path) -> Path:
    """A small Git project with a failing test, and the patch that fixes it."""
    root.mkdir()
    (root / "app.py").write_text(APP)
    (root / "test.sh").write_text(TEST)
    (root / "fix.patch").write_text(FIX)
    (root / ".gitignore").write_text("fix.patch\nfixed/\n__pycache__/\n")
    git = ["git", "-c", "user.name=me", "-c", "user.email=me@example.invalid"]
    for args in (
        ["init", "-q"],
        ["add", "app.py", "test.sh", ".gitignore"],
        ["commit", "-qm", "init"],
    ):
        subprocess.run([*git, *args], cwd=root, check=True)
    return root


def render(cast_path: Path, svg_path: Path) -> None:
    if not SVG_TERM.exists():
        raise SystemExit("tools/svg-term is not installed: run `make svg-term`")
    size = ["--width", str(WIDTH), "--height", str(HEIGHT)]
    frame = ["--window", "--no-cursor", *size]
    subprocess.run(
        [str(SVG_TERM), "--in", str(cast_path), "--out", str(svg_path), *frame], check=True
    )


def main(names: list[str], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="pyro-walkthrough-") as tmp:
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYRO_HOME": str(Path(tmp) / "pyro-home"),
            "COLUMNS": str(WIDTH),
            "HOME": os.environ.get("HOME", tmp),
        }
        for name in names:
            workdir = project(Path(tmp) / name)
            cast = record(name, WALKTHROUGHS[name], workdir, env)
            cast_path = out_dir / f"walkthrough-{name}.cast"
            cast_path.write_text(cast.dump())
            render(cast_path, out_dir / f"walkthrough-{name}.svg")
            print(f"wrote {cast_path} and {cast_path.with_suffix('.svg')}")


if __name__ == "__main__":
    chosen = sys.argv[1:] or list(WALKTHROUGHS)
    unknown = set(chosen) - set(WALKTHROUGHS)
    if unknown:
        raise SystemExit(f"unknown walkthrough(s) {sorted(unknown)}; known: {list(WALKTHROUGHS)}")
    main(chosen, Path(os.environ.get("WALKTHROUGH_DIR", ASSETS)))
