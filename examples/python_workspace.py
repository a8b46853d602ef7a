"""The workspace loop in pyro-mcp 4.5's call shapes: seed a project, reproduce
a failure, checkpoint, patch, prove the fix, run a service, export the result,
review, reset, delete.

    uv run python examples/python_workspace.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pyro_mcp import Pyro

APP = "def add(a, b):\n    return a - b\n"
TEST = "python3 -c 'from app import add; assert add(2, 3) == 5, add(2, 3)' && echo tests pass\n"
FIX = """--- a/app.py
+++ b/app.py
@@ -1,2 +1,2 @@
 def add(a, b):
-    return a - b
+    return a + b
"""


def main() -> None:
    pyro = Pyro()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        (project / "app.py").write_text(APP)
        (project / "test.sh").write_text(TEST)
        token_file = Path(tmp) / "token.txt"
        token_file.write_text("from-a-file\n")

        created = pyro.create_workspace(
            environment="debian:12",
            seed_path=project,
            secrets=[
                {"name": "API_TOKEN", "value": "expected-secret"},
                {"name": "FILE_TOKEN", "file_path": str(token_file)},
            ],
        )
        workspace_id = created["workspace_id"]
        seed = created["workspace_seed"]
        print(f"seeded {seed['entry_count']} files into {seed['destination']}")
        try:
            failing = pyro.exec_workspace(workspace_id, "sh test.sh")
            print(f"before the fix: exit {failing['exit_code']}")

            snapshot = pyro.create_snapshot(workspace_id, "before-fix")["snapshot"]
            print(f"checkpoint: {snapshot['snapshot_name']}")
            print(
                f"patch changed files: {pyro.apply_workspace_patch(workspace_id, FIX)['changed']}"
            )
            passing = pyro.exec_workspace(
                workspace_id,
                'test "$API_TOKEN" = expected-secret && sh test.sh',
                secret_env={"API_TOKEN": "API_TOKEN"},
            )
            print(f"after the fix: exit {passing['exit_code']}: {passing['stdout'].strip()}")
            print(f"diff: {pyro.diff_workspace(workspace_id)['summary']['total']} file(s)")

            service = pyro.start_service(
                workspace_id,
                "worker",
                "touch /workspace/.ready && while true; do sleep 1; done",
                readiness={"type": "file", "path": "/workspace/.ready"},
            )
            print(f"service {service['name']}: {service['state']}")
            services = pyro.list_services(workspace_id)
            print(f"services: {services['running_count']} of {services['count']} running")
            pyro.stop_service(workspace_id, "worker")

            exported = pyro.export_workspace(
                workspace_id, "app.py", output_path=Path(tmp) / "out" / "fixed" / "app.py"
            )
            print(f"exported a {exported['artifact_type']} to {exported['output']}")

            summary = pyro.summarize_workspace(workspace_id)
            print(
                f"review: {len(summary['commands'])} commands, "
                f"{len(summary['artifacts']['exports'])} export(s), "
                f"{summary['snapshots']['named_count']} named snapshot(s)"
            )

            reset = pyro.reset_workspace(workspace_id, snapshot="before-fix")
            again = pyro.exec_workspace(workspace_id, "sh test.sh")
            print(
                f"reset #{reset['reset_count']} to {reset['workspace_reset']['snapshot_name']}: "
                f"exit {again['exit_code']} again"
            )
            listed = pyro.list_workspaces()
            print(f"workspaces: {listed['count']}")
        finally:
            pyro.delete_workspace(workspace_id)


if __name__ == "__main__":
    main()
