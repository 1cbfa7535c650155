"""Hosts failing on a real 3-host lab with shared storage, with the default timings.

A host powered off (`lab host kill`): it is suspect, failed (the lab switch finds no libvirtd
there), fenced, and its HA VM answers HTTP from another host with the disk it had (its boot count
up by exactly one); its VM on local disk waits, saying why, and runs again once the host is back.
A host cut off the network with its guests still running (`lab host partition`): it is fenced
before anything restarts, and once the partition heals and the host is on again, the VM runs
exactly once and its disk saw one more boot, not two.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import libvirt
import pytest

from flexvm.lab import Lab
from flexvm.lab.plan import SHARED_STORAGE_NAME
from tests.helpers import FlexvmServer, lab_server, unique, vm_of, wait_for

HOSTS = ("lab1", "lab2", "lab3")


@pytest.fixture(scope="module")
def ha_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlexvmServer]:
    lab_args = ("--hosts", "3", "--host-cpus", "2", "--host-memory", "2G", "--shared-storage")
    with lab_server(tmp_path_factory.mktemp("ha-lab"), *lab_args) as server:
        yield server


def host_of(server: FlexvmServer, name: str) -> dict[str, Any]:
    return dict(server.ok("host", "show", name, "-o", "json").json())


def info(ip: str) -> str | None:
    try:
        with httpx.Client(trust_env=False, timeout=3) as http:
            response = http.get(f"http://{ip}/info")
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def boots(ip: str) -> int:
    text = wait_for(lambda: info(ip), 30, f"{ip} to answer /info")
    field = next(tok for tok in text.split() if tok.startswith("boots="))
    return int(field.split("=", 1)[1])


def running_copies(server: FlexvmServer, domain: str) -> list[str]:
    """The lab hosts whose libvirt runs a guest of that name (asked directly, not flexvm)."""
    found = []
    for host in HOSTS:
        record = host_of(server, host)
        if record["state"] != "up":
            continue
        conn = libvirt.open(record["uri"])
        try:
            if domain in [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]:
                found.append(host)
        finally:
            conn.close()
    return found


def story(server: FlexvmServer, host: str) -> dict[str, Any]:
    fence = wait_for(
        lambda: (f := host_of(server, host).get("last_fence")) and f["status"] in ("succeeded", "failed") and f,
        60,
        f"the fence of {host} to end",
    )
    assert fence["status"] == "succeeded", fence
    return dict(fence["result"])


def seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def back_up(server: FlexvmServer, lab: Lab, host: str) -> None:
    lab.start_host(host)
    wait_for(lambda: host_of(server, host)["state"] == "up", 60, f"{host} to be up again")


def test_a_killed_host_is_fenced_and_its_ha_vm_answers_from_another(ha_lab: FlexvmServer) -> None:
    lab = Lab(ha_lab.home / "lab")
    db, local = unique("db"), unique("loc")
    ha_lab.ok(
        "vm", "create", db, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab1",
        "--storage", SHARED_STORAGE_NAME, "--ha",
    )  # fmt: skip
    ha_lab.ok("vm", "create", local, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab1")
    ip = vm_of(ha_lab, db)["nics"][0]["ip"]
    before = boots(ip)

    killed_at = time.time()
    ha_lab.ok("lab", "host", "kill", "lab1")
    try:
        wait_for(lambda: vm_of(ha_lab, db)["host"] != "lab1", 90, f"{db} to be restarted elsewhere")
        wait_for(lambda: info(ip), 60, f"{db} to answer on its new host")
        answered_at = time.time()
        moved = vm_of(ha_lab, db)
        assert moved["host"] in ("lab2", "lab3") and moved["power_state"] == "running"
        assert boots(ip) == before + 1, "one more boot from the same disk: the VM restarted once"
        result = story(ha_lab, "lab1")
        restart = result["restarted"][0]
        assert restart["vm"] == db and restart["status"] == "succeeded" and restart["to"] == moved["host"]
        print(
            f"\nhost killed -> {db} answering on {moved['host']}: {answered_at - killed_at:.1f} s "
            f"(detected->failed {seconds(result['detected_at'], result['failed_at']):.1f} s, "
            f"->fenced {seconds(result['failed_at'], result['fenced_at']):.1f} s, "
            f"->restarted {seconds(result['fenced_at'], restart['at']):.1f} s)"
        )
        assert host_of(ha_lab, "lab1")["state"] == "fenced"
        waiting = vm_of(ha_lab, local)
        assert waiting["host"] == "lab1" and "only on host lab1" in (waiting["unavailable"] or "")
        shown = ha_lab.ok("host", "show", "lab1").stdout
        assert "last failure" in shown and "fenced" in shown and f"on {moved['host']}" in shown
        kinds = [op["kind"] for op in ha_lab.ok("operation", "list", "-o", "json").json()]
        assert "host.fence" in kinds and "vm.restart-elsewhere" in kinds
    finally:
        back_up(ha_lab, lab, "lab1")
    # Back on: the VM on its local disk runs again there; the HA one stays where it went, once.
    wait_for(lambda: vm_of(ha_lab, local)["power_state"] == "running", 90, f"{local} to run again on lab1")
    assert vm_of(ha_lab, local)["unavailable"] is None
    wait_for(lambda: not host_of(ha_lab, "lab1")["leftovers"], 30, "lab1's stale definition of db to go")
    assert running_copies(ha_lab, db) == [vm_of(ha_lab, db)["host"]]
    for name in (db, local):
        ha_lab.ok("vm", "delete", name)


def test_a_partitioned_host_is_fenced_first_and_the_vm_never_runs_twice(ha_lab: FlexvmServer) -> None:
    lab = Lab(ha_lab.home / "lab")
    db = unique("pdb")
    ha_lab.ok(
        "vm", "create", db, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab2",
        "--storage", SHARED_STORAGE_NAME, "--ha",
    )  # fmt: skip
    ip = vm_of(ha_lab, db)["nics"][0]["ip"]
    before = boots(ip)
    ha_lab.ok("lab", "host", "partition", "lab2")
    try:
        wait_for(lambda: host_of(ha_lab, "lab2")["state"] == "suspect", 30, "lab2 to be suspect")
        result = story(ha_lab, "lab2")
        assert "lab2" in result["fence"] and "processes killed" in result["fence"]
        assert result["restarted"][0]["status"] == "succeeded"
        assert lab.processes_of("lab2") == [], "fenced: nothing runs on lab2 any more, partitioned or not"
        wait_for(lambda: info(ip), 60, f"{db} to answer on its new host")
        assert vm_of(ha_lab, db)["host"] in ("lab1", "lab3")
    finally:
        ha_lab.ok("lab", "host", "heal", "lab2")
        back_up(ha_lab, lab, "lab2")
    wait_for(lambda: not host_of(ha_lab, "lab2")["leftovers"], 30, "lab2's stale definition to go")
    assert running_copies(ha_lab, db) == [vm_of(ha_lab, db)["host"]]
    assert boots(ip) == before + 1, "its disk saw exactly one more boot: never two guests on it"
    ha_lab.ok("vm", "delete", db)
