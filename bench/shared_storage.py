"""Live migration on shared storage against the same guest on local storage, 2-host lab, same run.

Two tiny guests of the same size and image, one with its disk on the lab's shared storage and one
on its host's own, are moved back and forth between lab1 and lab2 with `flexvm vm migrate`, in
alternating order each round (whichever goes first to a host pays nothing the other does not).
One round trip each is made first and not counted: the first guest of a project on a host pays
for its network filter. Reported: the migration itself as libvirt timed it, the whole operation,
the downtime libvirt measured, and the disk bytes copied.

    .venv/bin/python bench/shared_storage.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import FlexvmServer  # noqa: E402

from flexvm.lab import Lab  # noqa: E402
from flexvm.lab.plan import SHARED_STORAGE_NAME  # noqa: E402

GUESTS = {"on-shared": ["--storage", SHARED_STORAGE_NAME], "on-local": []}


def migrate(server: FlexvmServer, name: str) -> dict[str, Any]:
    to = "lab2" if server.ok("vm", "show", name, "-o", "json").json()["host"] == "lab1" else "lab1"
    server.ok("vm", "migrate", name, "--to", to)
    operation = server.ok("operation", "list", "--target", name, "-o", "json").json()[0]
    assert operation["status"] == "succeeded", operation
    return dict(operation["result"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="flexvm-bench-shared-") as tmp:
        server = FlexvmServer(Path(tmp) / "home", {"FLEXVM_LIBVIRT_URI": "", "FLEXVM_READY_TIMEOUT": "120"})
        server.start()
        try:
            server.ok("lab", "up", "--hosts", "2", "--host-cpus", "2", "--host-memory", "2G", "--shared-storage")
            server.ok("image", "build", "tiny")
            for name, extra in GUESTS.items():
                server.ok("vm", "create", name, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab1", *extra)
            for name in GUESTS:  # the warm-up round trip
                migrate(server, name)
                migrate(server, name)
            results: dict[str, list[dict[str, Any]]] = {name: [] for name in GUESTS}
            for run in range(runs):
                order = list(GUESTS) if run % 2 == 0 else list(reversed(GUESTS))
                for name in order:
                    results[name].append(migrate(server, name))
            print(f"\nLive migration of the same tiny guest (Standard_B1ls), median of {runs} (worst in brackets)")
            print(f"  {'':12s} {'migration':>18s} {'whole operation':>20s} {'downtime':>18s} {'disk copied':>12s}")
            base = statistics.median(r["migration_seconds"] for r in results["on-local"])
            for name, rows in results.items():
                migration = [r["migration_seconds"] for r in rows]
                total = [r["total_seconds"] for r in rows]
                downtime = [r["downtime_ms"] or 0.0 for r in rows]
                ratio = statistics.median(migration) / base
                print(
                    f"  {name:12s} {statistics.median(migration):6.2f} s ({max(migration):5.2f}) {ratio:4.2f}x"
                    f" {statistics.median(total):8.2f} s ({max(total):5.2f})"
                    f" {statistics.median(downtime):8.0f} ms ({max(downtime):4.0f})"
                    f" {statistics.median(r['disk_bytes'] for r in rows) / 2**20:9.1f} MiB"
                )
            for name in GUESTS:
                server.ok("vm", "delete", name)
        finally:
            server.cli("lab", "down", "--force")
            Lab(server.home / "lab").down()
            server.stop()


if __name__ == "__main__":
    main()
