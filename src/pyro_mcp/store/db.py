"""The SQLite state store (WAL): one database file under the state dir.

Several pyro processes (CLI calls, an MCP server, SDK users) share it; WAL
mode and a busy timeout let them read and write at the same time. Every
multi-step change is one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyro_mcp.config import disk_full_message
from pyro_mcp.errors import InvalidArgument, StoreError
from pyro_mcp.models import VmRecord, VmState

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE vms (
        vm_id TEXT PRIMARY KEY,
        environment TEXT NOT NULL,
        state TEXT NOT NULL,
        vcpu_count INTEGER NOT NULL,
        mem_mib INTEGER NOT NULL,
        network INTEGER NOT NULL,
        owner_bound INTEGER NOT NULL,
        build_dir TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        accel TEXT,
        started_at REAL,
        supervisor_pid INTEGER,
        boot_ms INTEGER,
        last_error TEXT
    );
    """,
    """
    ALTER TABLE vms ADD COLUMN workspace_disk TEXT;
    CREATE TABLE workspaces (
        workspace_id TEXT PRIMARY KEY,
        name TEXT UNIQUE,
        labels TEXT NOT NULL,
        environment TEXT NOT NULL,
        vm_id TEXT NOT NULL,
        seed TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_activity_at REAL NOT NULL,
        expires_at REAL
    );
    CREATE TABLE journal (
        entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
        workspace_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        started_at REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX journal_by_workspace ON journal (workspace_id, entry_id);
    """,
    """
    ALTER TABLE vms ADD COLUMN baseline_disk TEXT;
    """,
    """
    ALTER TABLE workspaces ADD COLUMN ttl_seconds INTEGER;
    ALTER TABLE workspaces ADD COLUMN max_lifetime_seconds INTEGER;
    ALTER TABLE workspaces ADD COLUMN host_ca INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE tombstones (
        workspace_id TEXT PRIMARY KEY,
        name TEXT,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
    """
    ALTER TABLE workspaces ADD COLUMN network_policy TEXT NOT NULL DEFAULT 'off';
    CREATE TABLE published_ports (
        host_port INTEGER PRIMARY KEY,
        workspace_id TEXT NOT NULL,
        service TEXT NOT NULL,
        guest_port INTEGER NOT NULL
    );
    """,
    """
    CREATE TABLE snapshots (
        workspace_id TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at REAL NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (workspace_id, name)
    );
    """,
    """
    ALTER TABLE vms ADD COLUMN boot_kind TEXT;
    ALTER TABLE vms ADD COLUMN boot_warning TEXT;
    ALTER TABLE vms ADD COLUMN fresh_root INTEGER NOT NULL DEFAULT 1;
    """,
    """
    ALTER TABLE workspaces ADD COLUMN idle_suspend_seconds INTEGER;
    """,
    """
    ALTER TABLE workspaces ADD COLUMN forked_from TEXT;
    """,
    """
    ALTER TABLE workspaces ADD COLUMN egress TEXT;
    """,
    """
    ALTER TABLE workspaces ADD COLUMN idle_suspend_published INTEGER NOT NULL DEFAULT 0;
    """,
)

_VM_COLUMNS = tuple(VmRecord.__dataclass_fields__)


class Store:
    """Records in ``db_path``; thread-safe, one connection per thread."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path
        self._local = threading.local()
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for index in range(version, len(MIGRATIONS)):
                # Not executescript: it commits, which would split the migration.
                for statement in MIGRATIONS[index].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {index + 1}")

    def _describe(self, exc: sqlite3.Error) -> str:
        """The error, and for a full disk which filesystem and what to free."""
        full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        if not full and "database or disk is full" not in str(exc):
            return f"state database error ({self.path}): {exc}"
        return disk_full_message(self.path.parent)

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the state database {self.path}: {exc}") from exc
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK") if db.in_transaction else None
            raise StoreError(self._describe(exc)) from exc
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ vms

    def insert_vm(self, record: VmRecord) -> None:
        values = _vm_row(record)
        placeholders = ", ".join("?" for _ in values)
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO vms ({', '.join(values)}) VALUES ({placeholders})",
                tuple(values.values()),
            )

    def get_vm(self, vm_id: str) -> VmRecord | None:
        with self.transaction() as db:
            row = db.execute("SELECT * FROM vms WHERE vm_id = ?", (vm_id,)).fetchone()
        return _vm_record(row) if row else None

    def list_vms(self) -> list[VmRecord]:
        with self.transaction() as db:
            rows = db.execute("SELECT * FROM vms ORDER BY created_at DESC").fetchall()
        return [_vm_record(row) for row in rows]

    def update_vm(self, vm_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(_VM_COLUMNS)
        if unknown:
            raise ValueError(f"unknown VM fields: {sorted(unknown)}")
        values = {k: (v.value if isinstance(v, VmState) else v) for k, v in fields.items()}
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self.transaction() as db:
            db.execute(f"UPDATE vms SET {assignments} WHERE vm_id = ?", (*values.values(), vm_id))

    def workspace_names_by_vm(self) -> dict[str, str]:
        """``vm_id`` -> how its workspace is best named (name, or id)."""
        with self.transaction() as db:
            rows = db.execute("SELECT vm_id, workspace_id, name FROM workspaces").fetchall()
        return {
            row["vm_id"]: (
                f"{row['name']} ({row['workspace_id']})" if row["name"] else row["workspace_id"]
            )
            for row in rows
        }

    def delete_vm(self, vm_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM vms WHERE vm_id = ?", (vm_id,))

    # ----------------------------------------------------------- workspaces

    def insert_workspace(self, row: dict[str, Any]) -> None:
        row = _encode_workspace(row)
        placeholders = ", ".join("?" for _ in row)
        with self.transaction() as db:
            try:
                db.execute(
                    f"INSERT INTO workspaces ({', '.join(row)}) VALUES ({placeholders})",
                    tuple(row.values()),
                )
            except sqlite3.IntegrityError as exc:
                raise InvalidArgument("name", f"a workspace called {row['name']!r} exists") from exc

    def find_workspace(self, ref: str) -> dict[str, Any] | None:
        """The workspace whose id or name is ``ref``."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT * FROM workspaces WHERE workspace_id = ? OR name = ?", (ref, ref)
            ).fetchone()
        return _decode_workspace(row) if row else None

    def list_workspaces(self) -> list[dict[str, Any]]:
        with self.transaction() as db:
            rows = db.execute("SELECT * FROM workspaces ORDER BY last_activity_at DESC").fetchall()
        return [_decode_workspace(row) for row in rows]

    def update_workspace(self, workspace_id: str, **fields: Any) -> None:
        encoded = _encode_workspace(fields)
        assignments = ", ".join(f"{k} = ?" for k in encoded)
        with self.transaction() as db:
            try:
                db.execute(
                    f"UPDATE workspaces SET {assignments} WHERE workspace_id = ?",
                    (*encoded.values(), workspace_id),
                )
            except sqlite3.IntegrityError as exc:
                raise InvalidArgument(
                    "name", f"a workspace called {fields.get('name')!r} exists"
                ) from exc

    def delete_workspace(self, workspace_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM journal WHERE workspace_id = ?", (workspace_id,))
            db.execute("DELETE FROM workspaces WHERE workspace_id = ?", (workspace_id,))

    def add_published_port(
        self, workspace_id: str, service: str, host_port: int, guest_port: int
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO published_ports "
                "(host_port, workspace_id, service, guest_port) VALUES (?, ?, ?, ?)",
                (host_port, workspace_id, service, guest_port),
            )

    def published_ports(
        self, workspace_id: str, service: str | None = None
    ) -> list[dict[str, Any]]:
        query = "SELECT * FROM published_ports WHERE workspace_id = ?"
        params: tuple[Any, ...] = (workspace_id,)
        if service is not None:
            query += " AND service = ?"
            params += (service,)
        with self.transaction() as db:
            return [dict(row) for row in db.execute(query + " ORDER BY host_port", params)]

    def delete_published_ports(self, workspace_id: str, service: str | None = None) -> None:
        query = "DELETE FROM published_ports WHERE workspace_id = ?"
        params: tuple[Any, ...] = (workspace_id,)
        if service is not None:
            query += " AND service = ?"
            params += (service,)
        with self.transaction() as db:
            db.execute(query, params)

    def add_snapshot(self, workspace_id: str, name: str, created_at: float, size: int) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO snapshots (workspace_id, name, created_at, bytes) VALUES (?, ?, ?, ?)",
                (workspace_id, name, created_at, size),
            )

    def snapshots(self, workspace_id: str) -> list[dict[str, Any]]:
        with self.transaction() as db:
            rows = db.execute(
                "SELECT name, created_at, bytes FROM snapshots WHERE workspace_id = ? "
                "ORDER BY created_at",
                (workspace_id,),
            ).fetchall()
        return [dict(row) for row in rows]

    def delete_snapshot(self, workspace_id: str, name: str | None = None) -> None:
        query = "DELETE FROM snapshots WHERE workspace_id = ?"
        params: tuple[str, ...] = (workspace_id,)
        if name is not None:
            query, params = query + " AND name = ?", (workspace_id, name)
        with self.transaction() as db:
            db.execute(query, params)

    def add_tombstone(self, workspace_id: str, name: str | None, reason: str, at: float) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO tombstones (workspace_id, name, reason, at) "
                "VALUES (?, ?, ?, ?)",
                (workspace_id, name, reason, at),
            )

    def find_tombstone(self, ref: str) -> dict[str, Any] | None:
        """The most recent tombstone whose id or name is ``ref``."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT * FROM tombstones WHERE workspace_id = ? OR name = ? "
                "ORDER BY at DESC LIMIT 1",
                (ref, ref),
            ).fetchone()
        return dict(row) if row else None

    def add_journal(
        self, workspace_id: str, kind: str, started_at: float, data: dict[str, Any]
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO journal (workspace_id, kind, started_at, data) VALUES (?, ?, ?, ?)",
                (workspace_id, kind, started_at, json.dumps(data)),
            )

    def count_journal(self, workspace_id: str, kind: str) -> int:
        with self.transaction() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM journal WHERE workspace_id = ? AND kind = ?",
                (workspace_id, kind),
            ).fetchone()
        return int(row[0])

    def journal(self, workspace_id: str) -> list[dict[str, Any]]:
        with self.transaction() as db:
            rows = db.execute(
                "SELECT entry_id, kind, started_at, data FROM journal WHERE workspace_id = ? "
                "ORDER BY entry_id",
                (workspace_id,),
            ).fetchall()
        return [
            {
                # The entry's own keys win over anything stored in its data.
                **json.loads(r["data"]),
                "entry_id": r["entry_id"],
                "kind": r["kind"],
                "started_at": r["started_at"],
            }
            for r in rows
        ]


_JSON_WORKSPACE_FIELDS = ("labels", "seed", "egress")


def _encode_workspace(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k in _JSON_WORKSPACE_FIELDS else v for k, v in row.items()}


def _decode_workspace(row: sqlite3.Row) -> dict[str, Any]:
    return {
        k: json.loads(row[k]) if k in _JSON_WORKSPACE_FIELDS and row[k] is not None else row[k]
        for k in row.keys()  # noqa: SIM118 (sqlite3.Row iterates values)
    }


def _vm_row(record: VmRecord) -> dict[str, Any]:
    row = {name: getattr(record, name) for name in _VM_COLUMNS}
    row["state"] = record.state.value
    row["network"] = int(record.network)
    row["owner_bound"] = int(record.owner_bound)
    row["fresh_root"] = int(record.fresh_root)
    return row


def _vm_record(row: sqlite3.Row) -> VmRecord:
    data = {name: row[name] for name in _VM_COLUMNS}
    data["state"] = VmState(data["state"])
    data["network"] = bool(data["network"])
    data["owner_bound"] = bool(data["owner_bound"])
    data["fresh_root"] = bool(data["fresh_root"])
    return VmRecord(**data)
