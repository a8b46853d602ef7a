"""What going through ``pyro server`` costs next to the local engine: medians, never assertions.

    uv run python benchmarks/remote.py [--runs N] [--clients N] [--loops N]

Starts a real ``pyro server`` on 127.0.0.1 over a state directory of its own
(the environment cache is shared), with a token whose warm snapshot is taken
first, and prints, in the same run:

- exec round trip of ``true`` on a running workspace, local SDK vs remote SDK
  (target: remote ≤ local + 5 ms);
- workspace create seeded from a 1,000-file directory (target: remote ≤ 1.5 x local);
- export of a 10 MB file to a local path;
- N concurrent remote clients each looping create → exec → delete: loops per
  second, p50 and p95 of one loop, and the p95 of a ``list_workspaces`` call
  made meanwhile (the server stays responsive).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pyro_mcp import Pyro
from pyro_mcp.config import default_paths
from pyro_mcp.transport import RemoteTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.server.conftest import pyro_command, start


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def p95_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000


def seed_tree(root: Path, files: int) -> Path:
    for index in range(files):
        folder = root / f"pkg{index % 20}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{index}.py").write_text(f"VALUE = {index}\n" * 20)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--loops", type=int, default=3)
    args = parser.parse_args()
    cache = default_paths().cache_dir
    with tempfile.TemporaryDirectory(prefix="pyro-bench-remote-") as tmp:
        root = Path(tmp)
        env = dict(os.environ, PYRO_HOME=str(root / "server"), PYRO_CACHE_DIR=str(cache))
        made = subprocess.run(
            pyro_command("server", "token", "create", "bench", "--json"),
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = json.loads(made.stdout)["token"]
        process, url = start(env, root / "server.log")
        local = Pyro(state_dir=root / "local", cache_dir=cache)
        remote = Pyro(transport=RemoteTransport(url, token))
        try:
            local.prepare(network=False)
            remote.prepare(network=False)
            run(args, root, local, remote, url, token)
        finally:
            process.terminate()
            process.wait(timeout=60)
            if process.stdout is not None:
                process.stdout.close()
            for pyro in (local, Pyro(state_dir=root / "server", cache_dir=cache)):
                for workspace in pyro.list_workspaces()["workspaces"]:
                    pyro.delete_workspace(workspace["workspace_id"])
    return 0


def run(
    args: argparse.Namespace, root: Path, local: Pyro, remote: Pyro, url: str, token: str
) -> None:
    print(f"pyro server on {url}; {args.runs} runs each, medians")
    for name, pyro in (("local", local), ("remote", remote)):
        ws = pyro.create_workspace(name=f"exec-{name}")["workspace_id"]
        for _ in range(3):
            pyro.exec_workspace(ws, "true")
        call = functools.partial(pyro.exec_workspace, ws, "true")
        samples = [timed(call) for _ in range(args.runs * 4)]
        print(f"exec round trip `true`, {name:6}: {median_ms(samples):7.1f} ms")
        pyro.delete_workspace(ws)
        exec_ms = median_ms(samples)
        if name == "local":
            local_exec = exec_ms
    print(f"  remote - local: {exec_ms - local_exec:+.1f} ms (target ≤ +5 ms)")

    tree = seed_tree(root / "seed", 1000)
    creates: dict[str, float] = {}
    for name, pyro in (("local", local), ("remote", remote)):
        samples = []
        for _ in range(args.runs):
            started = time.perf_counter()
            ws = pyro.create_workspace(seed_path=tree)["workspace_id"]
            samples.append(time.perf_counter() - started)
            pyro.delete_workspace(ws)
        creates[name] = median_ms(samples)
        print(f"create with a 1,000-file seed, {name:6}: {creates[name]:7.0f} ms")
    print(f"  remote / local: {creates['remote'] / creates['local']:.2f}x (target ≤ 1.5x)")

    exports: dict[str, float] = {}
    for name, pyro in (("local", local), ("remote", remote)):
        ws = pyro.create_workspace(name=f"export-{name}")["workspace_id"]
        pyro.exec_workspace(ws, "head -c 10000000 /dev/urandom > big.bin")
        samples = []
        for index in range(args.runs):
            target = root / f"big-{name}-{index}.bin"
            samples.append(timed(functools.partial(pyro.export_workspace, ws, "big.bin", target)))
            target.unlink()
        pyro.delete_workspace(ws)
        exports[name] = median_ms(samples)
        print(f"export of a 10 MB file, {name:6}: {exports[name]:7.0f} ms")
    print(f"  remote / local: {exports['remote'] / exports['local']:.2f}x")

    loops: list[float] = []
    lists: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def client(index: int) -> None:
        pyro = Pyro(transport=RemoteTransport(url, token))
        for loop in range(args.loops):
            started = time.perf_counter()
            try:
                ws = pyro.create_workspace(name=f"c{index}-{loop}")["workspace_id"]
                pyro.exec_workspace(ws, "true")
                pyro.delete_workspace(ws)
            except Exception as exc:  # report, keep measuring the others
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                loops.append(time.perf_counter() - started)

    def prober() -> None:
        pyro = Pyro(transport=RemoteTransport(url, token))
        while not done.is_set():
            lists.append(timed(pyro.list_workspaces))
            time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    probe = threading.Thread(target=prober)
    started = time.perf_counter()
    probe.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    probe.join()
    elapsed = time.perf_counter() - started
    print(
        f"{args.clients} clients x {args.loops} create/exec/delete loops: "
        f"{len(loops) / elapsed:.2f} loops/s, loop p50 {median_ms(loops) / 1000:.1f} s, "
        f"p95 {p95_ms(loops) / 1000:.1f} s; list_workspaces meanwhile p50 "
        f"{median_ms(lists):.0f} ms, p95 {p95_ms(lists):.0f} ms; failures {len(failures)}"
    )
    for failure in sorted(set(failures))[:5]:
        print(f"  {failure}")


if __name__ == "__main__":
    sys.exit(main())
