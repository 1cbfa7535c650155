"""Flexibility on a 2-host lab with real tiny guests: resize without a restart (seen from inside the
guest), a resize that moves the VM, live migration with storage under a ticking guest, a drain,
a migration killed mid-way, cold migration and export/import with the disk's content checked."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flexvm.lab import Lab
from tests.helpers import FlexvmServer, console_lines, import_tiny_copy, unique, wait_for

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlexvmServer]:
    """Two lab hosts, 4 CPUs and 6 GiB each (5.5 GiB for guests), and the tiny image with a ticking console."""
    server = FlexvmServer(
        tmp_path_factory.mktemp("flex"),
        {
            "FLEXVM_LIBVIRT_URI": "",
            "FLEXVM_HEALTH_SECONDS": "2",
            "FLEXVM_READY_TIMEOUT": "90",
            "FLEXVM_STOP_TIMEOUT": "20",
            "FLEXVM_MIGRATION_TIMEOUT": "120",
        },
    )
    server.start()
    try:
        server.ok("lab", "up", "--hosts", "2", "--host-cpus", "4", "--host-memory", "6G")
        server.ok("image", "build", "tiny")
        import_tiny_copy(server, server, "tiny", "ticking", cmdline_extra="flexvm.tick=1")
        yield server
    finally:
        server.cli("lab", "down", "--force")
        Lab(server.home / "lab").down()
        server.stop()


def vm(server: FlexvmServer, name: str) -> dict:
    return server.ok("vm", "show", name, "-o", "json").json()


def console(server: FlexvmServer, name: str) -> str:
    return server.ok("vm", "console", name).stdout


def http_get(url: str) -> str | None:
    try:
        with httpx.Client(trust_env=False, timeout=5) as client:
            response = client.get(url)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def operation_of(server: FlexvmServer, name: str, kind: str) -> dict:
    ops = server.ok("operation", "list", "--target", name, "-o", "json").json()
    return next(op for op in ops if op["kind"] == kind)


def test_hot_resize_is_seen_inside_the_guest_without_a_restart(pool: FlexvmServer) -> None:
    name = unique("hot")
    pool.ok("vm", "create", name, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab1")
    assert vm(pool, name)["max_size"] == "Standard_B4ms"
    plan = pool.ok("vm", "resize", name, "--size", "Standard_B2s", "--dry-run", "-o", "json").json()
    assert plan["path"] == "hot" and plan["destination"] is None

    pool.ok("vm", "resize", name, "--size", "Standard_B2s")
    record = vm(pool, name)
    assert (record["size"], record["vcpus"], record["memory_mib"], record["host"]) == ("Standard_B2s", 2, 4096, "lab1")
    text = console(pool, name)
    wait_for(
        lambda: any(s["cpus"] == "2" for s in console_lines(console(pool, name), "flexvm: state")),
        30,
        "the guest to online its second vCPU",
    )
    first = console_lines(text, "flexvm: ready")[0]
    grown = max(int(s["mem_kib"]) for s in console_lines(console(pool, name), "flexvm: state"))
    assert grown > int(first["mem_kib"]) + 3000 * 1024, "the DIMM's 3.5 GiB came online in the guest"
    # No restart: one readiness line, one boot.
    assert len(console_lines(console(pool, name), "flexvm: ready")) == 1
    op = operation_of(pool, name, "vm.resize")
    assert op["result"]["path"] == "hot" and op["result"]["restarted"] is False

    # Memory back down through the balloon, still no restart.
    half = f"{name}-half"
    pool.ok("size", "create", half, "--vcpus", "2", "--memory", "2G", "--disk", "4G")
    pool.ok("vm", "resize", name, "--size", half)
    assert vm(pool, name)["memory_mib"] == 2048
    assert len(console_lines(console(pool, name), "flexvm: ready")) == 1
    # Fewer vCPUs cannot be done live under TCG (QEMU would crash at the next plug): said up front.
    refused = pool.cli("vm", "resize", name, "--size", "Standard_B1s")
    assert refused.returncode == 1 and "TCG" in refused.stderr and "--allow-restart" in refused.stderr
    pool.ok("vm", "resize", name, "--size", "Standard_B1s", "--allow-restart")
    record = vm(pool, name)
    assert (record["vcpus"], record["memory_mib"]) == (1, 1024)
    last = console_lines(console(pool, name), "flexvm: ready")[-1]
    assert (last["cpus"], last["boots"]) == ("1", "2"), "restarted once, at the new size"
    pool.ok("vm", "delete", name)
    pool.ok("size", "delete", half)


def test_a_resize_that_does_not_fit_here_moves_first(pool: FlexvmServer) -> None:
    big, small = unique("big"), unique("mv")
    pool.ok("vm", "create", big, "--size", "Standard_B2s", "--image", "tiny", "--host", "lab1")  # 4 of 5.5 GiB
    pool.ok("vm", "create", small, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab1")  # 4.5
    plan = pool.ok("vm", "resize", small, "--size", "Standard_B1ms", "--dry-run", "-o", "json").json()
    assert plan["path"] == "move-then-hot" and plan["destination"] == "lab2"
    ip = vm(pool, small)["nics"][0]["ip"]
    pool.ok("vm", "resize", small, "--size", "Standard_B1ms")
    moved = vm(pool, small)
    assert (moved["host"], moved["size"], moved["memory_mib"]) == ("lab2", "Standard_B1ms", 2048)
    assert moved["nics"][0]["ip"] == ip
    assert len(console_lines(console(pool, small), "flexvm: ready")) == 1, "moved and grown, never restarted"
    assert wait_for(lambda: http_get(f"http://{ip}/"), 30, "HTTP after the move").strip() == small
    # A size no host can hold is refused before anything happens, naming every host.
    refused = pool.cli("vm", "resize", small, "--size", "Standard_D2s_v5")
    assert refused.returncode == 1 and "no host can hold" in refused.stderr
    assert "lab1:" in refused.stderr and "lab2:" in refused.stderr
    assert vm(pool, small)["size"] == "Standard_B1ms"
    for name in (big, small):
        pool.ok("vm", "delete", name)


def test_live_migration_keeps_the_guest_ticking_and_its_address(pool: FlexvmServer) -> None:
    name = unique("tick")
    pool.ok("vm", "create", name, "--size", "Standard_B1ls", "--image", "ticking", "--host", "lab1")
    ip = vm(pool, name)["nics"][0]["ip"]
    wait_for(lambda: len(console_lines(console(pool, name), "flexvm: tick")) >= 3, 30, "a few ticks")
    answers: list[str | None] = []
    stop = threading.Event()

    def poll() -> None:  # bounded: at most 200 requests, stops with the test
        for _ in range(200):
            if stop.is_set():
                return
            answers.append(http_get(f"http://{ip}/"))
            stop.wait(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        pool.ok("vm", "migrate", name, "--to", "lab2")
    finally:
        stop.set()
        poller.join(timeout=30)
    record = vm(pool, name)
    assert record["host"] == "lab2" and record["disk_host"] == "lab2" and record["moving_to"] is None
    result = operation_of(pool, name, "vm.migrate-live")["result"]
    assert result["downtime_ms"] is not None and result["downtime_ms"] < 2000
    wait_for(lambda: len(console_lines(console(pool, name), "flexvm: tick")) >= 3 + 5, 30, "ticks after the move")
    ticks = console_lines(console(pool, name), "flexvm: tick")
    uptimes = [float(t["uptime"]) for t in ticks]
    assert all(b > a for a, b in zip(uptimes, uptimes[1:], strict=False)), "uptime never went back: no restart"
    gaps = [b - a for a, b in zip(uptimes, uptimes[1:], strict=False)]
    assert max(gaps) < 2.0, f"the guest's clock ran on across the move (largest gap {max(gaps):.2f} s)"
    assert len(console_lines(console(pool, name), "flexvm: ready")) == 1
    assert wait_for(lambda: http_get(f"http://{ip}/"), 30, "HTTP after the move").strip() == name
    answered = [a for a in answers if a is not None]
    assert len(answered) >= len(answers) - 5, f"{len(answers) - len(answered)} of {len(answers)} requests failed"
    pool.ok("vm", "delete", name)


def test_a_drain_empties_a_host_and_undrain_brings_it_back(pool: FlexvmServer) -> None:
    names = [unique("dr") for _ in range(3)]
    for name in names:
        pool.ok("vm", "create", name, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab2")
    plan = pool.ok("host", "drain", "lab2", "--parallel", "2", "--dry-run", "-o", "json").json()
    assert sorted(m["vm"] for m in plan["moves"]) == sorted(names)
    assert {m["destination"] for m in plan["moves"]} == {"lab1"} and plan["stays"] == {}
    pool.ok("host", "drain", "lab2", "--parallel", "2")
    assert pool.ok("host", "show", "lab2", "-o", "json").json()["state"] == "maintenance"
    for name in names:
        assert vm(pool, name)["host"] == "lab1" and vm(pool, name)["power_state"] == "running"
    refused = pool.cli("vm", "create", unique("no"), "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab2")
    assert refused.returncode == 1 and "maintenance" in refused.stderr
    pool.ok("host", "undrain", "lab2")
    assert pool.ok("host", "show", "lab2", "-o", "json").json()["state"] == "up"
    for name in names:
        pool.ok("vm", "delete", name)


def test_a_migration_whose_destination_dies_leaves_the_vm_running_where_it_was(pool: FlexvmServer) -> None:
    name = unique("kill")
    pool.ok("vm", "create", name, "--size", "Standard_B1ms", "--image", "tiny", "--host", "lab1")
    ip = vm(pool, name)["nics"][0]["ip"]
    # Keep the guest writing memory so the migration takes a while.
    writer = threading.Thread(target=http_get, args=(f"http://{ip}/dirty?mib=128&seconds=40",))
    writer.start()
    lab = Lab(pool.home / "lab")
    with pool.api() as api:
        op = api.post(f"/vms/{name}/migrate", json={"to": "lab2"}).json()
        wait_for(
            lambda: any(s["name"] == "migrate" for s in api.get(f"/operations/{op['id']}").json()["steps"]),
            60,
            "the migration to start copying",
        )
        lab.stop_host("lab2")
        try:
            done = pool.wait_operation(op["id"], 180)
        finally:
            lab.start_host("lab2")
    writer.join(timeout=60)
    assert done["status"] == "failed"
    record = vm(pool, name)
    assert record["host"] == "lab1" and record["moving_to"] is None and record["power_state"] == "running"
    assert wait_for(lambda: http_get(f"http://{ip}/"), 30, "HTTP on the source").strip() == name
    wait_for(lambda: pool.ok("host", "show", "lab2", "-o", "json").json()["state"] == "up", 30, "lab2 back")
    pool.ok("vm", "delete", name)


def test_cold_migration_and_export_import_keep_the_disk(pool: FlexvmServer, tmp_path: Path) -> None:
    name, copy = unique("cold"), unique("copy")
    pool.ok("vm", "create", name, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab1")
    pool.ok("vm", "restart", name)  # boots=2 written to its disk
    pool.ok("vm", "migrate", name, "--to", "lab2", "--cold")
    record = vm(pool, name)
    assert record["host"] == "lab2" and record["power_state"] == "running"
    assert console_lines(console(pool, name), "flexvm: ready")[-1]["boots"] == "3", "the disk came along"

    pool.ok("vm", "stop", name)
    exported = tmp_path / f"{name}.flexvm"
    pool.ok("vm", "export", name, str(exported))
    assert exported.stat().st_size > MIB
    pool.ok("vm", "import", str(exported), "--name", copy)
    assert console_lines(console(pool, copy), "flexvm: ready")[-1]["boots"] == "4", "the exported disk, as it was"

    pool.ok("vm", "capture", name, "--image", f"{name}-img")
    captured = unique("cap")
    pool.ok("vm", "create", captured, "--size", "Standard_B1ls", "--image", f"{name}-img")
    assert console_lines(console(pool, captured), "flexvm: ready")[-1]["boots"] == "4"
    for item in (name, copy, captured):
        pool.ok("vm", "delete", item)
    pool.ok("image", "delete", f"{name}-img")
