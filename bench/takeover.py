"""Takeover: how long after the server running an operation stops does another server resume it.

Two real `flexvm serve` processes share one private PostgreSQL 15 (tests/pg.py) and one
FLEXVM_HOME, as two servers on one machine (tests/integration/test_several_servers.py). Each run
creates a VM of the tiny image, ticking (`flexvm.tick=1`) and counted ready at its Nth tick, so the
create's `wait-ready` step lasts as long as chosen; at a moment drawn uniformly within one lease
renewal period after that step started, it stops the server that owns the create, in one of two
ways:

- `kill -9`: the process is gone; the survivor sees it (same machine: the pid and the kernel's
  start time of that pid no longer match) at its next look for orphans, without waiting for the
  lease;
- `SIGSTOP`: the process is alive but silent; only its lease running out lets the survivor in.

Takeover is timed from the signal to the moment the survivor recorded that it resumed the
operation (the operation's `result.resumed[].at`, written by the survivor); the moment a poll of the
survivor's API (every 20 ms) first showed it as the owner is printed beside it. Each stopped server
is started again (a paused one is woken and restarted) and the VM deleted before the next run.
Leases are FLEXVM_LEASE_SECONDS (default 15 s, renewed every third of it); servers look for
orphans every FLEXVM_TAKEOVER_POLL_SECONDS (default 1 s). Run under the heavy-work lock:

    flock /tmp/flexvm-heavy.lock .venv/bin/python bench/takeover.py [--runs 10] [--lease 15] [--quick]
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import FlexvmServer, domains, import_tiny_copy, unique, wait_for  # noqa: E402
from tests.integration.test_several_servers import create_until_booting, owner_of, server_id  # noqa: E402
from tests.pg import PrivateCluster  # noqa: E402

POLL_SECONDS = 1.0  # FLEXVM_TAKEOVER_POLL_SECONDS, the default


@dataclass
class Takeover:
    recorded: float  # signal to the survivor's record of resuming, seconds
    seen: float  # signal to the first poll that showed the survivor as owner
    finished: float  # signal to the create's end
    attempts: int  # of the wait-ready step


def survivor_owns(survivor: FlexvmServer, survivor_id: str, operation_id: str, timeout: float) -> float:
    """Poll until the survivor owns the operation; returns the wall-clock time it was seen."""
    with survivor.api() as api:
        wait_for(
            lambda: api.get(f"/operations/{operation_id}").json()["owner"] == survivor_id,
            timeout,
            f"server {survivor_id} to take over {operation_id}",
            interval=0.02,
        )
    return time.time()


def one_run(servers: list[FlexvmServer], image: str, prefix: str, how: str, lease: float, delay: float) -> Takeover:
    name = unique(prefix)
    operation_id = create_until_booting(servers[0], name, image)
    time.sleep(delay)
    owner = owner_of(servers[0], operation_id)
    victim = next(s for s in servers if server_id(s) == owner)
    survivor = next(s for s in servers if s is not victim)
    survivor_id = server_id(survivor)
    assert victim.proc is not None
    stopped_at = time.time()
    if how == "kill -9":
        victim.kill()
    else:
        victim.proc.send_signal(signal.SIGSTOP)
    try:
        seen_at = survivor_owns(survivor, survivor_id, operation_id, timeout=2 * lease + 30)
        done = survivor.wait_operation(operation_id, timeout=300)
        finished_at = time.time()
    finally:
        if how == "SIGSTOP":
            victim.proc.send_signal(signal.SIGCONT)
    if done["status"] != "succeeded":
        raise RuntimeError(f"the create of {name} ended {done['status']}: {done['error']}")
    resumed = [r for r in done["result"].get("resumed", []) if r["server"] == survivor_id]
    recorded_at = datetime.fromisoformat(resumed[0]["at"]).timestamp()
    attempts = next(s["attempts"] for s in done["steps"] if s["name"] == "wait-ready")
    # Ready for the next run: the victim a fresh server again, the VM gone.
    victim.stop()
    victim.start()
    with survivor.api() as api:
        survivor.wait_operation(api.delete(f"/vms/{name}").json()["id"])
    return Takeover(recorded_at - stopped_at, seen_at - stopped_at, finished_at - stopped_at, attempts)


def cleanup(servers: list[FlexvmServer], images: list[str], prefix: str) -> None:
    for srv in servers:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.send_signal(signal.SIGCONT)
    alive = next((s for s in servers if s.proc is not None and s.proc.poll() is None), None)
    if alive is not None:
        with alive.api() as api:
            for vm in api.get("/vms").json():
                alive.wait_operation(api.delete(f"/vms/{vm['name']}").json()["id"])
            for image in images:
                api.delete(f"/images/{image}")
    for srv in servers:
        srv.stop()
    left = sorted(d for d in domains() if d.startswith(prefix))
    if left:
        print(f"left behind in libvirt: {left}", file=sys.stderr)


def table(results: dict[str, list[Takeover]], lease: float) -> str:
    head = f"{'stopped by':<12}{'runs':>5}{'median s':>10}{'worst s':>9}{'x lease':>9}{'seen s':>8}{'to done s':>11}"
    lines = [head, "-" * len(head)]
    for how, runs in results.items():
        recorded = [r.recorded for r in runs]
        median, worst = statistics.median(recorded), max(recorded)
        lines.append(
            f"{how:<12}{len(runs):>5}{median:>10.2f}{worst:>9.2f}{median / lease:>9.2f}"
            f"{statistics.median(r.seen for r in runs):>8.2f}{statistics.median(r.finished for r in runs):>11.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per way of stopping")
    parser.add_argument("--lease", type=float, default=15.0, help="FLEXVM_LEASE_SECONDS (default 15, flexvm's)")
    parser.add_argument("--quick", action="store_true", help="3 runs each")
    parser.add_argument("--seed", type=int, default=10, help="of the moments the servers are stopped at")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    prefix = unique("bench-takeover")
    tiny, image = f"{prefix}-tiny", f"{prefix}-ticking"
    renewal = args.lease / 3
    ticks = int(renewal) + 15  # ready well after the latest stop, and after a takeover by lease
    moments = random.Random(args.seed)
    results: dict[str, list[Takeover]] = {"kill -9": [], "SIGSTOP": []}
    cluster = PrivateCluster.create()
    try:
        cluster.create_database("takeover")
        env = {
            "FLEXVM_DB_URL": cluster.url("takeover"),
            "FLEXVM_LEASE_SECONDS": str(args.lease),
            "FLEXVM_READY_TIMEOUT": "120",
        }
        with tempfile.TemporaryDirectory(prefix="flexvm-bench-") as tmp:
            home = Path(tmp) / "shared-home"
            servers = [FlexvmServer(home, dict(env)), FlexvmServer(home, dict(env))]
            try:
                for srv in servers:
                    srv.start()
                servers[0].ok("image", "build", "tiny", "--name", tiny)
                ready = f"flexvm: tick {ticks} "
                import_tiny_copy(servers[0], servers[0], tiny, image, ready_marker=ready, cmdline_extra="flexvm.tick=1")
                for how in results:
                    for i in range(runs):
                        delay = moments.uniform(0, renewal)
                        took = one_run(servers, image, prefix, how, args.lease, delay)
                        results[how].append(took)
                        print(
                            f"  {how} run {i + 1} (stopped {delay:.2f} s into wait-ready): "
                            f"resumed after {took.recorded:.2f} s "
                            f"(seen {took.seen:.2f} s, done {took.finished:.2f} s, attempts {took.attempts})",
                            file=sys.stderr,
                        )
            finally:
                cleanup(servers, [image, tiny], prefix)
    finally:
        cluster.destroy()
    print(
        f"\nTakeover of a VM create (waiting for its guest, ready at tick {ticks}) by the other of two servers\n"
        f"on one PostgreSQL, stopped at a random moment within a renewal period; lease {args.lease:g} s\n"
        f"(renewed every {renewal:.3g} s), orphans looked for every {POLL_SECONDS:g} s:\n"
    )
    print(table(results, args.lease))


if __name__ == "__main__":
    main()
