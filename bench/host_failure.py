"""Host killed -> its HA VM answering HTTP on another host, on a 3-host lab with shared storage.

One tiny HA guest on the lab's shared storage; each run powers off the host it runs on (`flexvm
lab host kill`, as a power cut would), waits until the guest answers HTTP again from another host,
then powers the dead host on again. The default timings are used (checks every 2 s, a host failed
after 6 s of missed checks and the lab switch's second opinion). The total is split as the fence
operation recorded it: detection (kill to failed: the missed checks), fencing (failed to fenced:
the power-off and its confirmation), and restart (fenced to the guest answering: define, boot,
DHCP). Baseline: Proxmox VE's HA manager waits 60 s for its watchdog fence before a restart.

    .venv/bin/python bench/host_failure.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import FlexvmServer, wait_for  # noqa: E402

from flexvm.lab import Lab  # noqa: E402
from flexvm.lab.plan import SHARED_STORAGE_NAME  # noqa: E402

VM = "ha-bench"


def answers(ip: str) -> bool:
    try:
        with httpx.Client(trust_env=False, timeout=2) as http:
            return http.get(f"http://{ip}/").status_code == 200
    except httpx.HTTPError:
        return False


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def one_failure(server: FlexvmServer, lab: Lab, ip: str) -> dict[str, float]:
    victim = server.ok("vm", "show", VM, "-o", "json").json()["host"]
    killed = time.time()
    server.ok("lab", "host", "kill", victim)
    wait_for(lambda: server.ok("vm", "show", VM, "-o", "json").json()["host"] != victim, 120, "the restart")
    wait_for(lambda: answers(ip), 120, f"{VM} to answer HTTP")
    answered = time.time()
    fence = wait_for(
        lambda: (
            (f := server.ok("host", "show", victim, "-o", "json").json()["last_fence"])
            and f["status"] == "succeeded"
            and f
        ),
        60,
        "the fence to end",
    )
    result = fence["result"]
    lab.start_host(victim)
    wait_for(lambda: server.ok("host", "show", victim, "-o", "json").json()["state"] == "up", 60, "the host back")
    return {
        "total": answered - killed,
        "detection": stamp(result["failed_at"]) - killed,
        "fencing": stamp(result["fenced_at"]) - stamp(result["failed_at"]),
        "restart": answered - stamp(result["fenced_at"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="flexvm-bench-ha-") as tmp:
        server = FlexvmServer(Path(tmp) / "home", {"FLEXVM_LIBVIRT_URI": "", "FLEXVM_READY_TIMEOUT": "120"})
        server.start()
        lab = Lab(server.home / "lab")
        try:
            server.ok("lab", "up", "--hosts", "3", "--host-cpus", "2", "--host-memory", "2G", "--shared-storage")
            server.ok("image", "build", "tiny")
            server.ok(
                "vm", "create", VM, "--size", "Standard_B1ls", "--image", "tiny", "--storage", SHARED_STORAGE_NAME,
                "--ha",
            )  # fmt: skip
            ip = server.ok("vm", "show", VM, "-o", "json").json()["nics"][0]["ip"]
            wait_for(lambda: answers(ip), 60, f"{VM} to answer HTTP")
            results = [one_failure(server, lab, ip) for _ in range(runs)]
        finally:
            server.cli("lab", "down", "--force")
            lab.down()
            server.stop()
    print(f"\nHost killed -> HA VM answering HTTP on another host, 3-host lab, {runs} runs (default timings)")
    print(f"{'phase':<12} {'median':>8} {'worst':>8}")
    for phase in ("detection", "fencing", "restart", "total"):
        values = [r[phase] for r in results]
        print(f"{phase:<12} {statistics.median(values):>7.1f}s {max(values):>7.1f}s")
    total = statistics.median(r["total"] for r in results)
    print(f"baseline: Proxmox VE HA, 60 s fence wait plus its restart; flexvm's median total {total:.1f} s")


if __name__ == "__main__":
    main()
