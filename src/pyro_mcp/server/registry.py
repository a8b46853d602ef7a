"""What ``pyro server`` keeps besides the engine's own state: tokens, who owns
which workspace and VM, and the archives waiting between a client and a call.

One SQLite file beside the engine's (``PYRO_HOME/server.db``). A token is
stored only as its SHA-256: a token is 32 random bytes, so a plain hash is
not guessable, and the lookup by hash takes the same path for a wrong token
as for a revoked one (revoking deletes the row).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyro_mcp import crossings, names
from pyro_mcp.errors import InvalidArgument, NotFound, StoreError

TOKEN_PREFIX = "pyro_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL,
    max_running INTEGER,
    max_disk_gib REAL,
    profile TEXT,
    created_at REAL NOT NULL,
    capabilities TEXT NOT NULL DEFAULT '',
    max_env_gib REAL
);
CREATE TABLE IF NOT EXISTS owners (
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    principal TEXT NOT NULL,
    PRIMARY KEY (kind, ref)
);
CREATE TABLE IF NOT EXISTS spool (
    ticket TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    principal TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Principal:
    """Who a token speaks for, and its limits."""

    name: str
    admin: bool = False
    max_running: int | None = None
    max_disk_gib: float | None = None
    profile: str | None = None
    capabilities: tuple[str, ...] = ()  # operator switches granted (crossings.Capability)
    max_env_gib: float | None = None  # what its own environments may take

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Registry:
    """Tokens, owners and spooled archives of one server (thread-safe)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._local = threading.local()
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
                db.executescript(_SCHEMA)  # commits on its own
                columns = {row[1] for row in db.execute("PRAGMA table_info(tokens)")}
                added = {"capabilities": "TEXT NOT NULL DEFAULT ''", "max_env_gib": "REAL"}
                for column, kind in added.items():  # a registry from an older pyro
                    if column not in columns:
                        db.execute(f"ALTER TABLE tokens ADD COLUMN {column} {kind}")
                db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"the server registry {path} failed: {exc}") from exc
        path.chmod(0o600)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = getattr(self._local, "db", None)
        try:
            if db is None:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode=WAL")
                self._local.db = db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"the server registry {self.path} failed: {exc}") from exc

    # ---------------------------------------------------------------- tokens

    def create_token(
        self,
        name: str,
        *,
        admin: bool = False,
        max_running: int | None = None,
        max_disk_gib: float | None = None,
        profile: str | None = None,
        capabilities: Sequence[str] = (),
        max_env_gib: float | None = None,
    ) -> str:
        """A new token for ``name``, returned once; only its hash is kept.
        ``capabilities`` are the operator switches it may use (``crossings.Capability``
        values; an admin token has them all).

        Raises:
            InvalidArgument: a bad name, limit or capability, or a token of that name exists.
        """
        granted = sorted({crossings.capability(c).value for c in capabilities})
        names.check_name("name", name)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", name):
            # A principal's workspaces are stored as "NAME.WORKSPACE": no dot here.
            raise InvalidArgument(
                "name", f"{name!r}: 1-32 letters, digits, '_' or '-' (no '.') for a token"
            )
        if max_running is not None and max_running < 0:
            raise InvalidArgument("max_running", "must be 0 or more")
        if max_disk_gib is not None and max_disk_gib < 0:
            raise InvalidArgument("max_disk_gib", "must be 0 or more")
        if max_env_gib is not None and max_env_gib < 0:
            raise InvalidArgument("max_env_gib", "must be 0 or more")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._db() as db:
            if db.execute("SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone():
                raise InvalidArgument(
                    "name", f"a token called {name!r} exists; revoke it first to replace it"
                )
            db.execute(
                "INSERT INTO tokens (name, hash, admin, max_running, max_disk_gib, profile, "
                "created_at, capabilities, max_env_gib) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    _hash(token),
                    int(admin),
                    max_running,
                    max_disk_gib,
                    profile,
                    time.time(),
                    ",".join(granted),
                    max_env_gib,
                ),
            )
        return token

    def tokens(self) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM tokens ORDER BY name").fetchall()
        return [{**_principal(row).to_dict(), "created_at": row["created_at"]} for row in rows]

    def revoke(self, name: str) -> None:
        """Forget ``name``'s token (its workspaces stay, owned by ``name``).

        Raises:
            NotFound: no token of that name.
        """
        with self._db() as db:
            if db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no token called {name!r}; see `pyro server token list`")

    def principal_for(self, token: str) -> Principal | None:
        """Who ``token`` speaks for, or None (unknown or revoked: the same path)."""
        with self._db() as db:
            row = db.execute("SELECT * FROM tokens WHERE hash = ?", (_hash(token),)).fetchone()
        return _principal(row) if row is not None else None

    def principal_named(self, name: str) -> Principal | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM tokens WHERE name = ?", (name,)).fetchone()
        return _principal(row) if row is not None else None

    # ---------------------------------------------------------------- owners

    def own(self, kind: str, ref: str, principal: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO owners VALUES (?, ?, ?)", (kind, ref, principal))

    def owner(self, kind: str, ref: str) -> str | None:
        with self._db() as db:
            row = db.execute(
                "SELECT principal FROM owners WHERE kind = ? AND ref = ?", (kind, ref)
            ).fetchone()
        return str(row["principal"]) if row is not None else None

    def owned(self, kind: str, principal: str) -> set[str]:
        with self._db() as db:
            rows = db.execute(
                "SELECT ref FROM owners WHERE kind = ? AND principal = ?", (kind, principal)
            ).fetchall()
        return {str(row["ref"]) for row in rows}

    # ----------------------------------------------------------------- spool

    def spool(self, kind: str, principal: str, path: Path) -> str:
        """Record an upload or a download at ``path``; its ticket."""
        ticket = secrets.token_hex(16)
        with self._db() as db:
            db.execute(
                "INSERT INTO spool VALUES (?, ?, ?, ?, ?)",
                (ticket, kind, principal, str(path), time.time()),
            )
        return ticket

    def take(self, kind: str, ticket: str, principal: str) -> Path | None:
        """The path of ``principal``'s ``ticket`` (forgotten now), or None."""
        with self._db() as db:
            row = db.execute(
                "SELECT path FROM spool WHERE ticket = ? AND kind = ? AND principal = ?",
                (ticket, kind, principal),
            ).fetchone()
            if row is not None:
                db.execute("DELETE FROM spool WHERE ticket = ?", (ticket,))
        return Path(row["path"]) if row is not None else None

    def stale(self, older_than: float) -> list[Path]:
        """Forget spooled archives older than ``older_than`` seconds; their paths."""
        cutoff = time.time() - older_than
        with self._db() as db:
            rows = db.execute("SELECT path FROM spool WHERE created_at < ?", (cutoff,)).fetchall()
            db.execute("DELETE FROM spool WHERE created_at < ?", (cutoff,))
        return [Path(row["path"]) for row in rows]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _principal(row: sqlite3.Row) -> Principal:
    return Principal(
        name=row["name"],
        admin=bool(row["admin"]),
        max_running=row["max_running"],
        max_disk_gib=row["max_disk_gib"],
        profile=row["profile"],
        capabilities=tuple(c for c in str(row["capabilities"] or "").split(",") if c),
        max_env_gib=row["max_env_gib"],
    )
