import threading
import time
from pathlib import Path

from pyro_mcp.models import VmRecord, VmState
from pyro_mcp.store.db import Store


def record(vm_id: str = "vm-1") -> VmRecord:
    return VmRecord(
        vm_id=vm_id,
        environment="debian:12",
        state=VmState.CREATED,
        vcpu_count=1,
        mem_mib=512,
        network=False,
        owner_bound=False,
        build_dir="/b",
        created_at=time.time(),
        expires_at=None,
    )


def test_records_round_trip_and_update(tmp_path: Path) -> None:
    store = Store(tmp_path / "pyro.db")
    store.insert_vm(record())
    store.update_vm("vm-1", state=VmState.RUNNING, supervisor_pid=42, accel="tcg")
    loaded = store.get_vm("vm-1")
    assert loaded is not None
    assert (loaded.state, loaded.supervisor_pid, loaded.network) == (VmState.RUNNING, 42, False)
    store.delete_vm("vm-1")
    assert store.get_vm("vm-1") is None


def test_reopening_the_database_keeps_records_and_does_not_migrate_twice(tmp_path: Path) -> None:
    Store(tmp_path / "pyro.db").insert_vm(record())
    assert [r.vm_id for r in Store(tmp_path / "pyro.db").list_vms()] == ["vm-1"]


def test_the_database_uses_wal_for_concurrent_processes(tmp_path: Path) -> None:
    store = Store(tmp_path / "pyro.db")
    with store.transaction() as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_threads_can_write_at_the_same_time(tmp_path: Path) -> None:
    store = Store(tmp_path / "pyro.db")
    threads = [
        threading.Thread(target=store.insert_vm, args=(record(f"vm-{i}"),)) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.list_vms()) == 8
