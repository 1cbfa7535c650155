"""Control-plane cost per operation on the fake driver, against the bare driver calls, same run.

Each VM goes through create (Standard_B1s), a hot resize (to Standard_B2s) and delete, one
operation at a time, each waited for as the unit tests wait (tests/unit/waiting.py: the
operation's record polled every 10 ms). Milliseconds per operation (median, p95), operations per
second (one at a time), the median's ratio to bare and to the old engine, the median of the
operation's own record, created to finished (the rest is the caller's wait), and the median
number of database transactions that wrote during one operation (commits), for:

- bare: the same fake-driver calls a create, resize and delete make, called directly with no
  platform, no database and no operation records (the least the control plane can cost);
- the old engine (5a39231: one process, operations were threads) on SQLite;
- the durable engine (this tree) on SQLite, and on PostgreSQL 15 (a private cluster,
  tests/pg.py, stopped afterwards).

Every engine runs in a fresh interpreter of its own (the old one imports the old tree: by default
`git archive 5a39231` into a temporary directory, or `--old-tree` a checkout of it); every
platform is built as the unit tests build theirs (tests/unit/pool_helpers.py: no local host, one
fake host added through the service, the image imported from a real 64 MiB qcow2).

    .venv/bin/python bench/control_plane.py [--quick] [--cycles 300] [--old-tree DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The old engine's worker runs this file with FLEXVM_BENCH_TREE naming the old tree: it imports that code.
TREE = Path(os.environ.get("FLEXVM_BENCH_TREE", str(ROOT)))
sys.path.insert(0, str(TREE))
sys.path.insert(0, str(TREE / "src"))

OLD_COMMIT = "5a39231"
OPERATIONS = ("create", "resize", "delete")
SIZE, BIGGER = "Standard_B1s", "Standard_B2s"  # 1 vCPU 1 GiB -> 2 vCPUs 4 GiB, hot (under the ceiling)
HOST = {"cpus": 64, "memory_mib": 256 * 1024, "disk_gib": 10_000}  # room for any run, whatever N
READY = "flexvm: ready"
GIB = 1024**3

Times = dict[str, list[float]]


# --- workers: each runs in its own interpreter and prints its times as JSON ---------------------


def small_disk(directory: Path) -> Path:
    path = directory / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def bare_worker(cycles: int, warmup: int) -> Times:
    """The fake-driver calls of a create, a hot resize and a delete (as a trace of the platform's
    shows them), made directly."""
    from tests.unit.pool_helpers import fake_uri

    from flexvm.drivers.fake import FakeDriver
    from flexvm.model.guest import GuestDisk, GuestNic, GuestSpec
    from flexvm.model.host import Accelerator

    driver = FakeDriver.for_uri(fake_uri(**HOST))
    with tempfile.TemporaryDirectory(prefix="flexvm-bench-") as tmp:
        disk = small_disk(Path(tmp))
        driver.upload_image_volume("img.disk", disk)
        driver.upload_image_volume("img.complete", disk)

    def create(name: str) -> None:
        os_disk, log = f"{name}-os.qcow2", f"{name}.console.log"
        driver.has_image_volume("img.complete")
        driver.delete_instance_volume(os_disk)
        driver.delete_instance_volume(log)
        driver.create_overlay(os_disk, "img.disk", "qcow2", 4 * GIB)
        driver.guest_info(name)
        vm_id = str(uuid.uuid4())
        spec = GuestSpec(
            name=name,
            uuid=vm_id,
            vm_id=vm_id,
            vcpus=1,
            memory_mib=1024,
            accelerator=Accelerator.TCG,
            disks=(GuestDisk(os_disk),),
            nics=(GuestNic("52:54:00:00:00:01"),),
            console_log=log,
            max_vcpus=2,
            max_memory_mib=4096,
            memory_slots=16,
        )
        driver.define(spec)
        driver.guest_info(name)
        driver.start(name)
        while READY not in driver.console_read(log, 0).decode():
            pass

    def resize(name: str) -> None:
        log = f"{name}.console.log"
        offset = len(driver.console_read(log, 0))
        driver.guest_info(name)
        driver.set_vcpus(name, 2)
        driver.guest_info(name)
        driver.attach_memory(name, 3072)
        driver.set_memory_target(name, 4096)
        driver.console_read(log, offset)

    def delete(name: str) -> None:
        driver.destroy(name)
        driver.undefine(name)
        driver.delete_instance_volume(f"{name}-os.qcow2")
        driver.delete_instance_volume(f"{name}.console.log")

    steps: dict[str, Callable[[str], None]] = {"create": create, "resize": resize, "delete": delete}

    def one(operation: str, name: str) -> None:
        steps[operation](name)
        return None

    return cycle(one, cycles, warmup)


def platform_worker(engine: str, db_url: str, cycles: int, warmup: int) -> Times:
    """A platform as the unit tests build one, on the old engine or this tree's."""
    from tests.unit.pool_helpers import add_host, pool_settings, run
    from tests.unit.waiting import wait_done

    from flexvm.drivers import connect
    from flexvm.platform import Platform

    with tempfile.TemporaryDirectory(prefix="flexvm-bench-") as tmp:
        directory = Path(tmp)
        make_settings: Callable[..., Any] = pool_settings
        if engine == "old":  # its pool_settings has no db_url: always SQLite in the home
            settings = make_settings(directory)
        else:
            settings = pool_settings(directory, db_url or f"sqlite:///{directory / 'home' / 'flexvm.db'}")
        platform: Any = Platform.open(settings, connect)
        platform.collect_metrics = False
        platform.run_scaling = False
        platform.start()
        try:
            add_host(platform, "a", **HOST)
            run(platform, platform.images.import_image("img", small_disk(directory), ready_marker=READY))
            calls: dict[str, Callable[[str], Any]] = {
                "create": lambda name: platform.vms.create(name, SIZE, "img"),
                "resize": lambda name: platform.resizer.resize(name, BIGGER),
                "delete": lambda name: platform.vms.delete(name),
            }

            commits = count_write_commits(platform.db.engine)

            def one(operation: str, name: str) -> tuple[float, float]:
                before = commits[0]
                done = wait_done(platform, calls[operation](name).id, 60.0)
                if done.status.value != "succeeded":
                    raise RuntimeError(f"{operation} of {name} ended {done.status.value}: {done.error}")
                return float((done.finished_at - done.created_at).total_seconds()), float(commits[0] - before)

            return cycle(one, cycles, warmup)
        finally:
            deadline = time.monotonic() + 30
            while platform.runner.running() and time.monotonic() < deadline:
                time.sleep(0.01)
            platform.close()


def cycle(one: Callable[[str, str], tuple[float, float] | None], cycles: int, warmup: int) -> Times:
    """``warmup`` VMs through create, resize, delete untimed, then ``cycles`` timed: each
    operation from the call to its end seen by the caller and, where ``one`` returns them, from the
    operation's own record, created to finished (``op:recorded``), and the transactions that wrote
    meanwhile (``op:commits``)."""
    keys = ("", ":recorded", ":commits")
    times: Times = {f"{operation}{key}": [] for operation in OPERATIONS for key in keys}
    for i in range(warmup + cycles):
        name = f"b{i:05d}"
        for operation in OPERATIONS:
            started = time.perf_counter()
            extra = one(operation, name)
            took = time.perf_counter() - started
            if i >= warmup:
                recorded, commits = extra if extra is not None else (took, 0.0)
                times[operation].append(took)
                times[f"{operation}:recorded"].append(recorded)
                times[f"{operation}:commits"].append(commits)
    return times


def count_write_commits(engine: Any) -> list[int]:
    """A counter (a one-item list) of the commits of transactions that wrote, on any thread."""
    from sqlalchemy import event

    counter = [0]

    def executed(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            conn.info["wrote"] = True

    def committed(conn: Any) -> None:
        if conn.info.pop("wrote", False):
            counter[0] += 1

    event.listen(engine, "before_cursor_execute", executed)
    event.listen(engine, "commit", committed)
    return counter


# --- the run: one worker per engine, then the table ----------------------------------------------


def run_worker(
    kind: str, cycles: int, warmup: int, *, db_url: str = "", tree: Path = ROOT, env: dict[str, str] | None = None
) -> Times:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--cycles", str(cycles)]
    argv += ["--warmup", str(warmup), "--db-url", db_url]
    full_env = dict(os.environ, **(env or {}))
    done = subprocess.run(argv, cwd=tree, env=full_env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def old_tree_env(tree: Path) -> dict[str, str]:
    return {"FLEXVM_BENCH_TREE": str(tree), "PYTHONPATH": f"{tree / 'src'}:{tree}"}


def export_old_tree(directory: Path) -> Path:
    tree = directory / f"flexvm-{OLD_COMMIT}"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", OLD_COMMIT, "src", "tests"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def on_postgresql(cycles: int, warmup: int) -> Times:
    from tests.pg import PrivateCluster

    cluster = PrivateCluster.create()
    try:
        cluster.create_database("bench")
        return run_worker("new", cycles, warmup, db_url=cluster.url("bench"))
    finally:
        cluster.destroy()


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def table(results: dict[str, Times]) -> str:
    bare, old = results["bare fake-driver calls"], results[f"old engine ({OLD_COMMIT}), SQLite"]
    head = (
        f"{'operation':<10}{'engine':<30}{'median ms':>10}{'p95 ms':>9}{'ops/s':>9}"
        f"{'x bare':>8}{'x old':>7}{'recorded ms':>13}{'commits':>9}"
    )
    lines = [head, "-" * len(head)]
    for operation in OPERATIONS:
        for label, times in results.items():
            values = times[operation]
            median = statistics.median(values)
            per_second = len(values) / sum(values)
            x_bare = median / statistics.median(bare[operation])
            x_old = "" if times is bare else f"{median / statistics.median(old[operation]):.2f}"
            recorded = statistics.median(times[f"{operation}:recorded"])
            lines.append(
                f"{operation:<10}{label:<30}{median * 1000:>10.3f}{p95(values) * 1000:>9.3f}"
                f"{per_second:>9.0f}{x_bare:>8.0f}{x_old:>7}{recorded * 1000:>13.3f}"
                f"{statistics.median(times[f'{operation}:commits']):>9.0f}"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 VMs per engine instead of --cycles")
    parser.add_argument("--cycles", type=int, default=300, help="timed VMs per engine (create, resize, delete)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--old-tree", type=Path, help=f"a checkout of {OLD_COMMIT} (default: git archive of it)")
    parser.add_argument("--worker", choices=["bare", "old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--db-url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cycles = 20 if args.quick else args.cycles
    warmup = 2 if args.quick else args.warmup

    if args.worker == "bare":
        print(json.dumps(bare_worker(cycles, warmup)))
        return
    if args.worker is not None:
        print(json.dumps(platform_worker(args.worker, args.db_url, cycles, warmup)))
        return

    results: dict[str, Times] = {}
    with tempfile.TemporaryDirectory(prefix="flexvm-bench-") as tmp:
        old_tree = args.old_tree.resolve() if args.old_tree else export_old_tree(Path(tmp))
        runs: dict[str, Callable[[], Times]] = {
            "bare fake-driver calls": lambda: run_worker("bare", cycles, warmup),
            f"old engine ({OLD_COMMIT}), SQLite": lambda: run_worker(
                "old", cycles, warmup, tree=old_tree, env=old_tree_env(old_tree)
            ),
            "durable engine, SQLite": lambda: run_worker("new", cycles, warmup),
            "durable engine, PostgreSQL": lambda: on_postgresql(cycles, warmup),
        }
        for label, measure in runs.items():
            started = time.monotonic()
            results[label] = measure()
            print(f"  {label}: {cycles} VMs in {time.monotonic() - started:.1f} s", file=sys.stderr)
    print(f"\n{cycles} VMs per engine (after {warmup} untimed), each created, resized and deleted in turn:\n")
    print(table(results))


if __name__ == "__main__":
    main()
