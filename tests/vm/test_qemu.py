from pathlib import Path

import pytest

from pyro_mcp.vm.qemu import MachineSpec, tcg_clock_arguments


def spec(**overrides: object) -> MachineSpec:
    values: dict[str, object] = dict(
        qemu=Path("/usr/bin/qemu-system-x86_64"),
        accel="tcg",
        vcpu_count=1,
        mem_mib=512,
        kernel=Path("k"),
        initrd=Path("i"),
        root_disk=Path("r.qcow2"),
        agent_socket=Path("a.sock"),
        console_socket=Path("c.sock"),
        qmp_socket=Path("q.sock"),
        hostname="pyro",
        network=False,
    )
    values.update(overrides)
    return MachineSpec(**values)  # type: ignore[arg-type]


def test_the_machine_is_a_microvm_without_default_devices() -> None:
    argv = spec().argv()
    assert argv[argv.index("-M") + 1] == "microvm,accel=tcg,mem-merge=on"
    assert {"-nodefaults", "-no-user-config", "-no-reboot"} <= set(argv)
    assert "virtserialport,chardev=agent,name=org.pyro.agent" in argv


def test_no_network_means_no_nic_at_all() -> None:
    argv = spec().argv()
    assert "-netdev" not in argv and "pyro.net=1" not in " ".join(argv)
    networked = spec(network=True, egress_command="relay egress.sock").argv()
    # The guest reaches nothing but the egress proxy's address.
    netdev = networked[networked.index("-netdev") + 1]
    assert netdev == "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:3128-cmd:relay egress.sock"
    assert "pyro.net=1" in networked[networked.index("-append") + 1]


def test_kvm_uses_the_host_cpu() -> None:
    argv = spec(accel="kvm").argv()
    assert argv[argv.index("-cpu") + 1] == "host"


def test_tcg_guests_get_the_host_tsc_frequency(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\ncpu MHz\t\t: 2596.136\n")
    assert tcg_clock_arguments(cpuinfo) == " tsc_early_khz=2596136 tsc=reliable"
    assert tcg_clock_arguments(tmp_path / "missing") == " tsc=reliable"


def test_a_warm_template_writes_its_ram_file_and_a_warm_vm_maps_it_privately() -> None:
    template = spec(memory_file=Path("ram.img"), memory_shared=True).argv()
    assert template[template.index("-M") + 1] == "microvm,accel=tcg,memory-backend=ram"
    backend = template[template.index("-object") + 1]
    assert backend == "memory-backend-file,id=ram,size=512M,mem-path=ram.img,share=on,merge=on"
    assert template[template.index("-m") + 1] == "512"  # must match the backend's size
    assert "-incoming" not in template
    restored = spec(memory_file=Path("ram.img"), incoming=True).argv()
    assert "share=off" in restored[restored.index("-object") + 1]
    assert restored[restored.index("-incoming") + 1] == "defer"


def test_guest_ram_is_not_offered_to_page_merging_when_merging_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYRO_MEMORY_MERGE", "off")
    assert spec().argv()[spec().argv().index("-M") + 1].endswith(",mem-merge=off")
    warm = spec(memory_file=Path("ram.img")).argv()
    assert warm[warm.index("-object") + 1].endswith(",merge=off")


def test_cold_boots_keep_ram_anonymous() -> None:
    argv = spec().argv()
    assert "-object" not in argv and "memory-backend" not in " ".join(argv)
