"""A project's declared environment: ``.devcontainer/devcontainer.json``.

pyro reads what says where the environment comes from: ``image`` (pulled, as
``pyro env pull`` does) or ``build.dockerfile`` with ``build.context`` and
``build.args`` (built in a guest, as ``pyro env build`` does); paths are
relative to the file's folder, as the devcontainer spec says. The file is
JSON with comments and trailing commas, read with ``json-five`` (the JSON5
reader pyro already uses for host configs; JSON5 is a superset of that). Other
properties (features, mounts, lifecycle commands) are not used.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_mcp.errors import InvalidArgument

LOCATIONS = (".devcontainer/devcontainer.json", ".devcontainer.json")


class DevcontainerError(InvalidArgument):
    """A devcontainer file pyro cannot use; names the file and the field."""

    def __init__(self, path: Path, field: str, message: str) -> None:
        super().__init__("devcontainer", f"{path}: {field}: {message}")
        self.path = path
        self.field = field


@dataclass(frozen=True)
class Devcontainer:
    path: Path
    project: Path
    image: str | None = None
    dockerfile: Path | None = None
    context: Path | None = None
    args: tuple[tuple[str, str], ...] = ()

    @property
    def environment_name(self) -> str:
        """The project's environment: the folder's name and a short hash of its path
        (two checkouts called ``app`` do not share one)."""
        slug = re.sub(r"[^a-z0-9._-]+", "-", self.project.name.lower()).strip("-._")[:40]
        digest = hashlib.sha256(str(self.project.resolve()).encode()).hexdigest()[:8]
        return f"{slug or 'project'}:devcontainer-{digest}"

    def describe(self) -> str:
        relative = self.path.relative_to(self.project)
        if self.image:
            return f"{relative} (image {self.image})"
        return f"{relative} (build {self.dockerfile})"


def find(project: Path) -> Path | None:
    for location in LOCATIONS:
        candidate = project / location
        if candidate.is_file():
            return candidate
    return None


def read(project: Path) -> Devcontainer | None:
    """The project's devcontainer, or None when it has no file.

    Raises:
        DevcontainerError: the file is not valid or names nothing pyro can use.
    """
    import json5  # json-five; only when a project has a devcontainer file

    path = find(project)
    if path is None:
        return None
    try:
        data = json5.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DevcontainerError(path, "(file)", f"cannot be read: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise DevcontainerError(path, "(syntax)", f"is not valid JSON: {detail}") from exc
    if not isinstance(data, dict):
        raise DevcontainerError(path, "(top level)", "must be an object")
    folder = path.parent
    image = data.get("image")
    build = data.get("build")
    if image is not None and build is not None:
        raise DevcontainerError(path, "image", "give image or build, not both")
    if image is not None:
        if not isinstance(image, str) or not image.strip():
            raise DevcontainerError(path, "image", "must be an image reference (a string)")
        return Devcontainer(path, project, image=image.strip())
    if build is None:
        if data.get("dockerComposeFile") is not None:
            raise DevcontainerError(
                path, "dockerComposeFile", "Docker Compose devcontainers are not supported"
            )
        raise DevcontainerError(path, "image", "names no image and no build.dockerfile")
    if not isinstance(build, dict):
        raise DevcontainerError(path, "build", "must be an object")
    dockerfile = build.get("dockerfile")
    if not isinstance(dockerfile, str) or not dockerfile:
        raise DevcontainerError(path, "build.dockerfile", "must name the Dockerfile (a string)")
    context = build.get("context", ".")
    if not isinstance(context, str) or not context:
        raise DevcontainerError(path, "build.context", "must be a folder (a string)")
    args = build.get("args") or {}
    if not isinstance(args, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in args.items()
    ):
        raise DevcontainerError(path, "build.args", "must map names to strings")
    file = _inside(path, project, folder / dockerfile, "build.dockerfile")
    if not file.is_file():
        raise DevcontainerError(path, "build.dockerfile", f"{file} does not exist")
    context_dir = _inside(path, project, folder / context, "build.context")
    if not context_dir.is_dir():
        raise DevcontainerError(path, "build.context", f"{context_dir} is not a folder")
    pairs = tuple((key, _text(value)) for key, value in sorted(args.items()))
    return Devcontainer(path, project, dockerfile=file, context=context_dir, args=pairs)


def _inside(path: Path, project: Path, target: Path, field: str) -> Path:
    resolved = target.resolve()
    root = project.resolve()
    if resolved != root and root not in resolved.parents:
        raise DevcontainerError(path, field, f"{target} is outside the project {project}")
    return resolved


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def choose(root: Path | None, cache_dir: Path, default: str) -> tuple[str, str]:
    """The default environment of a server seeding from ``root``, and a note saying
    why: the project's declared environment once ``pyro prepare --project-path``
    made it, else ``default`` (and the note says how to make it, or what is wrong
    with the file). Cheap: the file is read only when there is one."""
    from pyro_mcp.environments.catalog import slug

    if root is None or find(root) is None:
        return default, ""
    try:
        declared = read(root)
    except DevcontainerError as exc:
        reason = str(exc).removeprefix("devcontainer: ")
        return default, f"the project's devcontainer is not used: {reason}"
    assert declared is not None
    name = declared.environment_name
    if (cache_dir / "environments" / slug(name) / "current").is_dir():
        return name, f"the project's environment, from {declared.describe()}"
    return default, (
        f"the project declares {declared.describe()}, not prepared yet: "
        f"`pyro prepare --project-path {root}` makes it the default"
    )
