"""Live migration and drain on a 2-host lab, against `virsh migrate --live --p2p`, same run.

For an idle tiny guest and for one busy rewriting memory (its /dirty endpoint), `flexvm vm
migrate` moves it lab1 -> lab2 (the whole operation: image check, destination overlay, the
migration, clean-up), then `virsh migrate --live --p2p --copy-storage-inc` moves the same guest
lab2 -> lab1 -> lab2 (the bare libvirt call, after the same destination preparation done by
hand, not timed). Downtime is what libvirt measured. Then the time to drain a host of 4 guests
with --parallel 1 and 2.

    .venv/bin/python bench/migration.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import FlexvmServer, unique  # noqa: E402

from flexvm.lab import Lab  # noqa: E402

POOL = "flexvm-instances"


def virsh(uri: str, *args: str) -> str:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, check=True, timeout=600).stdout


def prepare_destination(dest_uri: str, source_uri: str, volume: str) -> None:
    """What flexvm's mover does before a migration: a fresh overlay with the same backing on the destination."""
    info = ET.fromstring(virsh(source_uri, "vol-dumpxml", "--pool", POOL, volume))
    capacity = info.findtext("capacity") or "0"
    backing = info.findtext("backingStore/path") or ""
    subprocess.run(["virsh", "-c", dest_uri, "vol-delete", "--pool", POOL, volume], capture_output=True)
    virsh(
        dest_uri,
        "vol-create-as",
        POOL,
        volume,
        f"{capacity}b",
        "--format",
        "qcow2",
        "--backing-vol",
        backing,
        "--backing-vol-format",
        "qcow2",
    )


def virsh_migrate(name: str, source: tuple[str, str], dest: tuple[str, str]) -> tuple[float, float | None]:
    """(seconds, downtime ms) of one bare `virsh migrate --live --p2p` with incremental storage copy."""
    (source_uri, _), (dest_uri, dest_address) = source, dest
    prepare_destination(dest_uri, source_uri, f"{name}-os.qcow2")
    started = time.monotonic()
    virsh(
        source_uri,
        "migrate",
        "--live",
        "--p2p",
        "--persistent",
        "--undefinesource",
        "--copy-storage-inc",
        name,
        dest_uri,
        "--migrateuri",
        f"tcp://{dest_address}",
    )
    seconds = time.monotonic() - started
    downtime = None
    try:  # the destination keeps the completed job's statistics, downtime among them
        stats = virsh(dest_uri, "domjobinfo", name, "--completed")
        for line in stats.splitlines():
            if line.startswith("Total downtime:"):
                downtime = float(line.split(":")[1].split()[0])
    except subprocess.CalledProcessError:
        pass
    subprocess.run(["virsh", "-c", source_uri, "vol-delete", "--pool", POOL, f"{name}-os.qcow2"], capture_output=True)
    return seconds, downtime


def flexvm_migrate(server: FlexvmServer, name: str, to: str) -> tuple[float, float | None]:
    with server.api() as api:
        started = time.monotonic()
        op = api.post(f"/vms/{name}/migrate", json={"to": to}).json()
        done = server.wait_operation(op["id"], 600)
        seconds = time.monotonic() - started
    assert done["status"] == "succeeded", done["error"]
    return seconds, done["result"].get("downtime_ms")


def busy(ip: str, seconds: int) -> threading.Thread:
    def dirty() -> None:
        try:
            with httpx.Client(trust_env=False, timeout=seconds + 30) as client:
                client.get(f"http://{ip}/dirty?mib=128&seconds={seconds}")
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=dirty, daemon=True)
    thread.start()
    time.sleep(1.0)  # let the writer get going before the migration starts
    return thread


def migrations(server: FlexvmServer, runs: int) -> dict[str, list[tuple[float, float | None]]]:
    hosts = {h["name"]: h for h in server.ok("host", "list", "-o", "json").json()}
    lab1 = (hosts["lab1"]["uri"], hosts["lab1"]["uri"].split("//")[1].split("/")[0])
    lab2 = (hosts["lab2"]["uri"], hosts["lab2"]["uri"].split("//")[1].split("/")[0])
    results: dict[str, list[tuple[float, float | None]]] = {}
    for label, load in (("idle", False), ("busy", True)):
        name = unique(f"mig-{label}")
        server.ok("vm", "create", name, "--size", "Standard_B1ms", "--image", "tiny", "--host", "lab1")
        ip = server.ok("vm", "show", name, "-o", "json").json()["nics"][0]["ip"]
        for _ in range(runs):
            writer = busy(ip, 40) if load else None
            results.setdefault(f"flexvm vm migrate ({label})", []).append(flexvm_migrate(server, name, "lab2"))
            results.setdefault(f"virsh migrate --p2p ({label})", []).append(virsh_migrate(name, lab2, lab1))
            # And back with virsh, so flexvm's record (lab2) is true again for the next round.
            virsh_migrate(name, lab1, lab2)
            with server.api() as api:  # flexvm moves it home for the next round
                op = api.post(f"/vms/{name}/migrate", json={"to": "lab1"}).json()
                server.wait_operation(op["id"], 600)
            if writer is not None:
                writer.join(timeout=60)
        server.ok("vm", "delete", name)
    return results


def drains(server: FlexvmServer) -> dict[int, float]:
    names = [unique("drain") for _ in range(4)]
    for name in names:
        server.ok("vm", "create", name, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab2")
    timings: dict[int, float] = {}
    for parallel, host, back in ((1, "lab2", "lab1"), (2, "lab1", "lab2")):
        started = time.monotonic()
        server.ok("host", "drain", host, "--parallel", str(parallel), timeout=1200)
        timings[parallel] = time.monotonic() - started
        server.ok("host", "undrain", host)
        assert all(server.ok("vm", "show", n, "-o", "json").json()["host"] == back for n in names)
    for name in names:
        server.ok("vm", "delete", name)
    return timings


def report(results: dict[str, list[tuple[float, float | None]]], timings: dict[int, float], runs: int) -> None:
    print(f"\nLive migration of a tiny guest (1 vCPU, 2 GiB, TCG) between two lab hosts, median of {runs}\n")
    print(f"{'':32} {'total':>8} {'downtime':>10} {'vs virsh':>9}")
    for label in ("idle", "busy"):
        ours = results[f"flexvm vm migrate ({label})"]
        base = results[f"virsh migrate --p2p ({label})"]
        for name, samples in ((f"flexvm vm migrate ({label})", ours), (f"virsh migrate --p2p ({label})", base)):
            total = statistics.median(s[0] for s in samples)
            downs = [s[1] for s in samples if s[1] is not None]
            down = f"{statistics.median(downs):.0f} ms" if downs else "-"
            ratio = total / statistics.median(s[0] for s in base)
            print(f"{name:32} {total:7.2f}s {down:>10} {ratio:8.2f}x")
    print(
        "\n(flexvm's total is the whole operation: image check, destination overlay, migration, clean-up;\n"
        " virsh's is the bare migration after the same preparation, done beforehand and not timed.)\n"
    )
    print("Drain of a host holding 4 guests (Standard_B1ls)")
    for parallel, seconds in sorted(timings.items()):
        print(f"  --parallel {parallel}: {seconds:6.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flexvm-bench-") as tmp:
        server = FlexvmServer(Path(tmp) / "home", {"FLEXVM_LIBVIRT_URI": "", "FLEXVM_READY_TIMEOUT": "120"})
        server.start()
        try:
            server.ok("lab", "up", "--hosts", "2", "--host-cpus", "4", "--host-memory", "8G")
            server.ok("image", "build", "tiny")
            results = migrations(server, args.runs)
            timings = drains(server)
        finally:
            server.cli("lab", "down", "--force")
            Lab(server.home / "lab").down()
            server.stop()
    report(results, timings, args.runs)


if __name__ == "__main__":
    main()
