"""Hosts failing, and hosts patched, on a real 3-host lab with shared storage, default timings.

A host powered off (`lab host kill`): it is suspect, failed (the lab switch finds no libvirtd
there), fenced, and its HA VM answers HTTP from another host with the disk it had (its boot count
up by exactly one); its VM on local disk waits, saying why, and runs again once the host is back.
A host cut off the network with its guests still running (`lab host partition`): it is fenced
before anything restarts, and once the partition heals and the host is on again, the VM runs
exactly once and its disk saw one more boot, not two. A rolling maintenance of every host (its
hook restarts the host's libvirtd and virtlogd, as a hypervisor update does), with the server
killed in the middle of it: the next server finishes it, every VM of an availability set answered
HTTP throughout, never rebooted, and is back on the host it started on.
"""

from __future__ import annotations

import threading
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


class Pinger:
    """Bounded HTTP load on the guests' /info: every 0.2 s each, for at most 600 s, until stopped."""

    def __init__(self, ips: list[str]) -> None:
        self.ips, self.sent, self.failed = ips, 0, []  # type: ignore[var-annotated]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 600
        while not self.done.is_set() and time.monotonic() < deadline and self.sent < 20000:
            for ip in self.ips:
                self.sent += 1
                if info(ip) is None:
                    self.failed.append((time.strftime("%H:%M:%S"), ip))
            self.done.wait(0.2)

    def __enter__(self) -> Pinger:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)


def test_a_rolling_maintenance_survives_its_server_and_no_guest_notices(ha_lab: FlexvmServer) -> None:
    for host in HOSTS:
        wait_for(lambda h=host: host_of(ha_lab, h)["state"] == "up", 90, f"{host} to be up")
    ha_lab.ok("availability-set", "create", "mdb", "--fault-domains", "3")
    names = [unique("mdb") for _ in HOSTS]
    for name, host in zip(names, HOSTS, strict=True):
        ha_lab.ok(
            "vm", "create", name, "--size", "Standard_B1ls", "--image", "tiny", "--host", host,
            "--storage", SHARED_STORAGE_NAME, "--availability-set", "mdb",
        )  # fmt: skip
    ips = [vm_of(ha_lab, n)["nics"][0]["ip"] for n in names]
    booted = {ip: boots(ip) for ip in ips}
    plan = ha_lab.ok("maintenance", "plan", "--all", "-o", "json").json()
    assert [b["hosts"] for b in plan["batches"]] == [[h] for h in HOSTS] and plan["fits"], plan
    hook_log = ha_lab.home / "hooks.log"
    hook = f"flexvm lab host restart $FLEXVM_HOST && echo $FLEXVM_HOST >> {hook_log}"
    lab = Lab(ha_lab.home / "lab")
    libvirtd_before = {h: lab.daemon_pid(h, "libvirtd") for h in HOSTS}

    started = time.monotonic()
    with Pinger(ips) as load:
        # The server dies just after lab2's hook: the next one runs that hook again and goes on.
        ha_lab.stop()
        ha_lab.env_extra["FLEXVM_CRASH_AT"] = "maintenance.run:batch 2: update #1:acted"
        ha_lab.start()
        run_id = ha_lab.ok("maintenance", "run", "--all", "--hook", hook, "--no-wait", "-o", "json").json()["id"]
        assert ha_lab.proc is not None
        ha_lab.proc.wait(timeout=240)
        del ha_lab.env_extra["FLEXVM_CRASH_AT"]
        ha_lab.start()
        done = ha_lab.wait_operation(run_id, timeout=300)
    took = time.monotonic() - started
    assert done["status"] == "succeeded", (done["error"], ha_lab.log_tail())
    assert hook_log.read_text().split() == ["lab1", "lab2", "lab2", "lab3"]  # lab2's again, after the crash
    print(f"\nmaintenance run --all over 3 hosts: {took:.0f} s, {load.sent} requests, {len(load.failed)} failed")
    assert load.failed == [], load.failed
    for name, host, ip in zip(names, HOSTS, ips, strict=True):
        vm = vm_of(ha_lab, name)
        assert (vm["host"], vm["power_state"]) == (host, "running"), vm
        assert boots(ip) == booted[ip], f"{name} was never restarted: it moved live, twice"
    assert all(lab.daemon_pid(h, "libvirtd") != libvirtd_before[h] for h in HOSTS), "every hypervisor restarted"
    assert all(host_of(ha_lab, h)["state"] == "up" for h in HOSTS)
    status = ha_lab.ok("maintenance", "status").stdout
    assert "succeeded" in status and "lab3" in status
    for name in names:
        ha_lab.ok("vm", "delete", name)
    ha_lab.ok("availability-set", "delete", "mdb")
