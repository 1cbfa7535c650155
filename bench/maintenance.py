"""A rolling `maintenance run --all` over a 3-host lab under light load, with nothing failing.

The pool: an availability set of 3 tiny VMs on the lab's shared storage (one per host) and a scale
set of 3 instances on local disks behind HAProxy on loopback. The hook is `flexvm lab host restart
$FLEXVM_HOST` (libvirtd and virtlogd stop and start, as a hypervisor update does). Throughout the
run a bounded load sends GETs through HAProxy and straight to each availability-set VM's /info;
every failed request is counted. Reported: the plan's estimate and the real total, each phase's
share (drain, hook, back, return), VMs running and at home at the end, failed requests.

Baseline, same run: the hook alone on one host, timed directly (what the update costs if nothing
is moved and guests are trusted to survive it, which a real reboot would not allow).

    .venv/bin/python bench/maintenance.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import FLEXVM, FlexvmServer, free_port, wait_for  # noqa: E402

from flexvm.lab import Lab  # noqa: E402
from flexvm.lab.plan import SHARED_STORAGE_NAME  # noqa: E402

HOSTS = ("lab1", "lab2", "lab3")
HOOK = "flexvm lab host restart $FLEXVM_HOST"
MAX_REQUESTS = 40000
MAX_SECONDS = 900.0


class Load:
    """GETs to each URL in turn every 0.05 s, bounded in count and time, failures kept."""

    def __init__(self, urls: list[str]) -> None:
        self.urls, self.sent, self.failed = urls, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        with httpx.Client(trust_env=False, timeout=5) as http:
            while not self.stop.is_set() and time.monotonic() < deadline and self.sent < MAX_REQUESTS:
                for url in self.urls:
                    self.sent += 1
                    try:
                        if http.get(url).status_code != 200:
                            self.failed.append(url)
                    except httpx.HTTPError as err:
                        self.failed.append(f"{url}: {type(err).__name__}")
                self.stop.wait(0.05)


def seconds(step: dict) -> float:  # type: ignore[type-arg]
    return (datetime.fromisoformat(step["finished_at"]) - datetime.fromisoformat(step["started_at"])).total_seconds()


def main() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="flexvm-bench-maint-") as tmp:
        server = FlexvmServer(Path(tmp) / "home", {"FLEXVM_LIBVIRT_URI": "", "FLEXVM_READY_TIMEOUT": "120"})
        server.start()
        lab = Lab(server.home / "lab")
        try:
            server.ok("lab", "up", "--hosts", "3", "--host-cpus", "2", "--host-memory", "3G", "--shared-storage")
            server.ok("image", "build", "tiny")
            server.ok("availability-set", "create", "db", "--fault-domains", "3")
            for n, host in enumerate(HOSTS):
                server.ok(
                    "vm", "create", f"db{n}", "--size", "Standard_B1ls", "--image", "tiny", "--host", host,
                    "--storage", SHARED_STORAGE_NAME, "--availability-set", "db",
                )  # fmt: skip
            server.ok("scaleset", "create", "web", "--size", "Standard_B1ls", "--image", "tiny", "--instances", "3",
                      "--lb-port", f"{port}:80", "--fault-domains", "3", timeout=600)  # fmt: skip
            before = {vm["name"]: vm["host"] for vm in server.ok("vm", "list", "-o", "json").json()}
            ips = [server.ok("vm", "show", f"db{n}", "-o", "json").json()["nics"][0]["ip"] for n in range(3)]
            urls = [f"http://127.0.0.1:{port}/", *(f"http://{ip}/info" for ip in ips)]
            wait_for(lambda: all(httpx.get(u, timeout=3).status_code == 200 for u in urls), 60, "everything to answer")

            started = time.monotonic()
            subprocess.run(  # the baseline: the update alone, on one host
                [FLEXVM, "lab", "host", "restart", "lab1"], env=server.env, check=True, capture_output=True
            )
            hook_alone = time.monotonic() - started
            wait_for(lambda: server.ok("host", "show", "lab1", "-o", "json").json()["state"] == "up", 60, "lab1")

            plan = server.ok("maintenance", "plan", "--all", "-o", "json").json()
            load = Load(urls)
            load.thread.start()
            started = time.monotonic()
            try:
                server.ok("maintenance", "run", "--all", "--hook", HOOK, timeout=1200)
            finally:
                total = time.monotonic() - started
                load.stop.set()
                load.thread.join(timeout=30)
            run = server.ok("maintenance", "status", "-o", "json").json()["operation"]
            after = server.ok("vm", "list", "-o", "json").json()
        finally:
            (Path(tempfile.gettempdir()) / "flexvm-bench-maintenance-server.log").write_bytes(
                (server.home / "server.log").read_bytes()
            )
            server.cli("lab", "down", "--force")
            lab.down()
            server.stop()

    phases: dict[str, float] = {}
    for step in run["steps"]:
        part = step["name"].split(": ", 1)[1].split(" #")[0]
        phases[part] = phases.get(part, 0.0) + seconds(step)
    running = sum(1 for vm in after if vm["power_state"] == "running")
    home = sum(1 for vm in after if before.get(vm["name"]) == vm["host"])
    print(f"\nmaintenance run --all: 3 hosts, availability set of 3 + scale set of 3, hook `{HOOK}`")
    print(f"{'':<28} {'seconds':>8}")
    print(f"{'estimate (plan)':<28} {plan['estimate_seconds']:>8.1f}")
    print(f"{'total (measured)':<28} {total:>8.1f}")
    for part in ("drained", "update", "back", "returned", "check"):
        print(f"{'  ' + part:<28} {phases.get(part, 0.0):>8.1f}")
    print(f"{'baseline: the hook alone':<28} {hook_alone:>8.1f}  (x3 hosts = {3 * hook_alone:.1f} s; "
          f"the run takes {total / (3 * hook_alone):.1f}x that)")  # fmt: skip
    print(f"VMs running at the end: {running} of {len(after)}; on their first host: {home} of {len(after)}")
    print(f"requests: {load.sent} sent (through HAProxy and straight to the VMs), {len(load.failed)} failed")
    if load.failed:
        print("  first failures:", load.failed[:5])


if __name__ == "__main__":
    main()
