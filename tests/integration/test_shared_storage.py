"""Shared storage on a real two-host lab: `lab up --shared-storage` shares one directory with every
host (saying how), flexvm checks that both see it, a VM made there keeps its disk in that directory,
a live migration moves only its memory (the same guest on local storage moves its disk too), what
it wrote to its disk is there after the move, and a second copy of it cannot start on the other
host while it runs (virtlockd on each host, locking the disk file itself)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from flexvm.lab import Lab
from flexvm.lab.plan import SHARED_PATH, SHARED_STORAGE_NAME
from tests.helpers import FlexvmServer, lab_server, unique, vm_of, wait_for


@pytest.fixture(scope="module")
def shared_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlexvmServer]:
    lab_args = ("--hosts", "2", "--host-cpus", "2", "--host-memory", "2G", "--shared-storage")
    with lab_server(tmp_path_factory.mktemp("shared-lab"), *lab_args, env={"FLEXVM_HEALTH_SECONDS": "2"}) as server:
        yield server


def host_uri(server: FlexvmServer, host: str) -> str:
    return str(server.ok("host", "show", host, "-o", "json").json()["uri"])


def get(ip: str, path: str) -> str | None:
    try:
        with httpx.Client(trust_env=False, timeout=5) as http:
            response = http.get(f"http://{ip}{path}")
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def posix_write_locks() -> set[tuple[int, int]]:
    """(PID, inode) of every whole-file POSIX write lock on the machine (/proc/locks)."""
    held = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[1:4] == ["POSIX", "ADVISORY", "WRITE"]:
            held.add((int(fields[4]), int(fields[5].rsplit(":", 1)[1])))
    return held


def migrate(server: FlexvmServer, name: str, to: str) -> dict[str, Any]:
    server.ok("vm", "migrate", name, "--to", to)
    operation = server.ok("operation", "list", "--target", name, "-o", "json").json()[0]
    assert operation["kind"] == "vm.migrate-live" and operation["status"] == "succeeded", operation
    return dict(operation["result"])


def test_the_lab_shares_one_directory_and_flexvm_checked_every_host(shared_lab: FlexvmServer) -> None:
    status = shared_lab.ok("lab", "status", "-o", "json").json()
    assert status["shared_storage"]["path"] == SHARED_PATH
    assert status["shared_storage"]["how"].startswith("shared by bind-mount")
    shown = shared_lab.ok("storage", "show", SHARED_STORAGE_NAME, "-o", "json").json()
    assert shown["path"] == SHARED_PATH and shown["hosts"] == {"lab1": None, "lab2": None}
    # A directory only one host has is named as such.
    result = shared_lab.cli("storage", "add", "nas", "--path", "/srv/flexvm-not-mounted-anywhere")
    assert result.returncode == 1
    assert "not reachable from every host: lab1:" in result.stderr and "lab2:" in result.stderr
    assert [s["name"] for s in shared_lab.ok("storage", "list", "-o", "json").json()] == [SHARED_STORAGE_NAME]


def test_live_migration_on_shared_storage_moves_memory_only(shared_lab: FlexvmServer) -> None:
    shared, local = unique("db"), unique("loc")
    for name, extra in ((shared, ["--storage", SHARED_STORAGE_NAME]), (local, [])):
        shared_lab.ok("vm", "create", name, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab1", *extra)
    vm = vm_of(shared_lab, shared)
    assert vm["storage"] == SHARED_STORAGE_NAME and vm["host"] == "lab1"
    disk = shared_lab.home / "lab" / "shared" / vm["disks"][0]["name"]
    assert disk.is_file(), "the disk is in the shared directory, seen from the root namespace too"
    ip = vm["nics"][0]["ip"]
    assert wait_for(lambda: get(ip, "/note?text=before-the-move"), 30, f"{shared} storing a note") is not None

    moved = migrate(shared_lab, shared, "lab2")
    copied = migrate(shared_lab, local, "lab2")
    print(
        f"\nlive migration, same guest: shared storage {moved['migration_seconds']:.2f} s, "
        f"downtime {moved['downtime_ms']} ms, {moved['disk_bytes']} disk bytes; local storage "
        f"{copied['migration_seconds']:.2f} s, downtime {copied['downtime_ms']} ms, {copied['disk_bytes']} disk bytes"
    )
    assert moved["disk_bytes"] == 0 and copied["disk_bytes"] > 0
    assert vm_of(shared_lab, shared)["host"] == "lab2" and disk.is_file()
    assert wait_for(lambda: get(ip, "/note"), 30, f"{shared}'s note after the move").strip() == "before-the-move"
    assert "boots=1" in (get(ip, "/info") or "")
    # The other host's own pool never held it.
    lab2 = shared_lab.home / "lab" / "lab2" / "lib" / "flexvm" / "instances"
    assert not (lab2 / vm["disks"][0]["name"]).exists()
    for name in (shared, local):
        shared_lab.ok("vm", "delete", name)
    assert not disk.exists()


def test_a_second_copy_cannot_start_while_the_first_runs(shared_lab: FlexvmServer) -> None:
    """Moved to lab2 (the lock goes with it), then started again on lab1 behind flexvm's back."""
    name = unique("one")
    shared_lab.ok(
        "vm", "create", name, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab1",
        "--storage", SHARED_STORAGE_NAME,
    )  # fmt: skip
    migrate(shared_lab, name, "lab2")
    running = libvirt.open(host_uri(shared_lab, "lab2"))
    other = libvirt.open(host_uri(shared_lab, "lab1"))
    copy_name = f"{name}-copy"
    try:
        guest = running.lookupByName(name)
        xml, uuid = guest.XMLDesc(0), guest.UUIDString()
        # The same guest as another domain: its own name, UUID and console log, the same disk file.
        copy_xml = xml.replace(f"<name>{name}</name>", f"<name>{copy_name}</name>").replace(uuid, uuid[:-12] + "0" * 12)
        dom = other.defineXML(copy_xml.replace(".console.log", ".copy-console.log"))
        with pytest.raises(libvirt.libvirtError) as refused:
            dom.create()
        print(f"\na second copy on lab1: {refused.value.get_error_message()}")
        assert "lock" in refused.value.get_error_message().lower()
        assert not dom.isActive()
        assert guest.isActive(), "the first copy runs on"
        # QEMU's own image lock refused it first; virtlockd's, the guard that also holds where
        # QEMU's cannot reach (another machine's kernel), is on the disk file as well.
        state = Lab(shared_lab.home / "lab").status()
        assert state is not None
        virtlockd = next(h for h in state.hosts if h.name == "lab2").pids["virtlockd"]
        disk = shared_lab.home / "lab" / "shared" / vm_of(shared_lab, name)["disks"][0]["name"]
        assert (virtlockd, disk.stat().st_ino) in posix_write_locks()
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            other.lookupByName(copy_name).undefine()
        running.close()
        other.close()
        shared_lab.ok("vm", "delete", name)
