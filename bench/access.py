"""What access costs: the permission check per API request, and the quota check per VM create.

In one run, on the fake driver, on SQLite and on PostgreSQL 15 (a private cluster, tests/pg.py,
stopped afterwards), each platform holding POPULATION VMs in each of two projects:

(a) GET /v1/vms?project=team-a through the in-process app (Starlette's TestClient), requests per
    second and microseconds per request, for:
    - the bare service call ``platform.vms.list()`` (the baseline: what the route itself does);
    - the API with the route's access rule overridden by a fixed scope (no permission check);
    - the API with the bootstrap admin token (compared in memory, then the project looked up);
    - the API with a Reader's user token (its hash looked up, its user and roles read).
    "check µs" is a request's time less the unchecked request's: what the permission check adds.
    The variants take turns in rounds, so a drift of the machine falls on all of them alike.

(b) VM create (Standard_B1s, service call) in a project without quotas and in one with every quota
    set (high enough never to refuse), the two taking turns: the median of the create call (the
    claim transaction, where the quota is checked) and of call-to-succeeded; each VM is deleted
    again, untimed, so the projects' use stays the same throughout.

Loopback and in-process only; bounded in count.

    .venv/bin/python bench/access.py [--quick] [--requests 3000] [--creates 200] [--sqlite-only]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from fastapi.testclient import TestClient  # noqa: E402
from starlette.requests import Request  # noqa: E402
from tests.unit.pool_helpers import add_host, pool_settings, run  # noqa: E402
from tests.unit.waiting import wait_done  # noqa: E402

from flexvm.access.people import People  # noqa: E402
from flexvm.api.access import Scope, api_routes, authenticate  # noqa: E402
from flexvm.api.app import create_app  # noqa: E402
from flexvm.drivers import connect  # noqa: E402
from flexvm.model.access import ADMIN_USER, BOOTSTRAP_TOKEN, Caller, Quotas, Role  # noqa: E402
from flexvm.platform import Platform  # noqa: E402

TOKEN = "bench-bootstrap-token"
OPEN, LIMITED = "team-a", "team-q"  # no quotas; every quota set
SIZE = "Standard_B1s"
READY = "flexvm: ready"
HOST = {"cpus": 64, "memory_mib": 256 * 1024, "disk_gib": 10_000}  # room for any run
HIGH = Quotas(vcpus=100_000, memory_mib=100_000_000, vms=100_000, disk_bytes=10**15, instances=100_000)
ROUNDS = 5
VARIANTS = ("service call vms.list()", "API, no permission check", "API, bootstrap admin token", "API, Reader's token")
CHECKS = ("the check alone, admin token", "the check alone, Reader's token")


def small_disk(directory: Path) -> Path:
    path = directory / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


@contextmanager
def bench_platform(db_url: str, directory: Path, population: int) -> Iterator[Platform]:
    """One fake host, an image, projects team-a (no quotas) and team-q (every quota), each with
    ``population`` VMs."""
    platform = Platform.open(pool_settings(directory, db_url), connect)
    platform.collect_metrics = False
    platform.run_scaling = False
    platform.start()
    try:
        add_host(platform, "a", **HOST)
        run(platform, platform.images.import_image("img", small_disk(directory), ready_marker=READY))
        platform.projects.create(OPEN)
        platform.projects.create(LIMITED, quotas=HIGH)
        for project in (OPEN, LIMITED):
            for i in range(population):
                run(platform, platform.vms.create(f"{project}.vm{i:03d}", SIZE, "img"), timeout=60)
        yield platform
    finally:
        deadline = time.monotonic() + 30
        while platform.runner.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        platform.close()


def unchecked(app: Any) -> None:
    """Override GET /v1/vms's access rule with a fixed scope: the request as it would be without it."""
    route = next(r for path, r in api_routes(app.routes) if path == "/v1/vms" and "GET" in (r.methods or ()))
    rule = next(d.call for d in route.dependant.dependencies if hasattr(d.call, "access_rule"))
    admin = Caller(ADMIN_USER, BOOTSTRAP_TOKEN, Role.OWNER)
    app.dependency_overrides[rule] = lambda: Scope(admin, OPEN)


def requests_per_second(platform: Platform, count: int) -> dict[str, list[float]]:
    """Seconds per request (one per round) of each variant."""
    people = People(platform.db, TOKEN)
    people.create_user("reader")
    people.assign("reader", Role.READER, OPEN)
    reader_token = people.create_token("reader")[1]
    checked_app, unchecked_app = create_app(platform, TOKEN), create_app(platform, TOKEN)
    unchecked(unchecked_app)
    url = f"/v1/vms?project={OPEN}"
    with TestClient(checked_app) as checked, TestClient(unchecked_app) as bare_api:

        def api(client: TestClient, token: str | None) -> Callable[[], None]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}

            def call() -> None:
                response = client.get(url, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")

            return call

        calls: dict[str, Callable[[], Any]] = {
            VARIANTS[0]: platform.vms.list,
            VARIANTS[1]: api(bare_api, None),
            VARIANTS[2]: api(checked, TOKEN),
            VARIANTS[3]: api(checked, reader_token),
        }
        seconds = rounds(calls, count)
    return {**seconds, **check_alone(platform, checked_app, reader_token, count)}


def check_alone(platform: Platform, app: Any, reader_token: str, count: int) -> dict[str, list[float]]:
    """Seconds per call (one per round) of GET /v1/vms's rule by itself: the token turned into a
    caller (``authenticate``), then the project rule, as the route's dependencies call them."""
    route = next(r for path, r in api_routes(app.routes) if path == "/v1/vms" and "GET" in (r.methods or ()))
    rule = next(d.call for d in route.dependant.dependencies if hasattr(d.call, "access_rule"))

    def checking(token: str) -> Callable[[], None]:
        headers = [(b"authorization", f"Bearer {token}".encode())]

        def call() -> None:
            request = Request({"type": "http", "app": app, "headers": headers, "method": "GET", "path": "/v1/vms"})
            rule(request, OPEN, authenticate(request))

        return call

    calls = {CHECKS[0]: checking(TOKEN), CHECKS[1]: checking(reader_token)}
    return rounds(calls, count)


def rounds(calls: dict[str, Callable[[], Any]], count: int) -> dict[str, list[float]]:
    """Seconds per call of each, one figure per round, the calls taking turns round by round."""
    for call in calls.values():  # warm up: connections, caches, the route's first build
        for _ in range(20):
            call()
    per_round = max(1, count // ROUNDS)
    seconds: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(ROUNDS):
        for label, call in calls.items():
            started = time.perf_counter()
            for _ in range(per_round):
                call()
            seconds[label].append((time.perf_counter() - started) / per_round)
    return seconds


def create_costs(platform: Platform, count: int) -> dict[str, dict[str, list[float]]]:
    """Per project: the create call's seconds and call-to-succeeded seconds, ``count`` each."""
    times: dict[str, dict[str, list[float]]] = {p: {"call": [], "done": []} for p in (OPEN, LIMITED)}
    for i in range(count + 3):  # the first 3 untimed
        for project in (OPEN, LIMITED):
            key = f"{project}.bench{i:04d}"
            started = time.perf_counter()
            operation = platform.vms.create(key, SIZE, "img")
            called = time.perf_counter()
            done = wait_done(platform, operation.id, 60.0)
            finished = time.perf_counter()
            if done.status.value != "succeeded":
                raise RuntimeError(f"create of {key} ended {done.status.value}: {done.error}")
            if i >= 3:
                times[project]["call"].append(called - started)
                times[project]["done"].append(finished - started)
            run(platform, platform.vms.delete(key), timeout=60)
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def requests_table(results: dict[str, dict[str, list[float]]]) -> str:
    head = f"{'backend':<12}{'caller':<32}{'requests/s':>12}{'µs/request':>12}{'x service':>11}{'check µs':>10}"
    lines = [head, "-" * len(head)]
    for backend, seconds in results.items():
        median = {label: statistics.median(values) for label, values in seconds.items()}
        for label in VARIANTS:
            check = "" if label in VARIANTS[:2] else f"{(median[label] - median[VARIANTS[1]]) * 1e6:.0f}"
            lines.append(
                f"{backend:<12}{label:<32}{1 / median[label]:>12.0f}{median[label] * 1e6:>12.0f}"
                f"{median[label] / median[VARIANTS[0]]:>11.1f}{check:>10}"
            )
        for label in CHECKS:
            lines.append(
                f"{backend:<12}{label:<32}{1 / median[label]:>12.0f}{median[label] * 1e6:>12.0f}{'':>11}{'':>10}"
            )
        lines.append("")
    return "\n".join(lines)


def creates_table(results: dict[str, dict[str, dict[str, list[float]]]]) -> str:
    head = (
        f"{'backend':<12}{'project':<22}{'call median ms':>15}{'call p95 ms':>12}{'x no quota':>11}"
        f"{'to done median ms':>19}{'x no quota':>11}"
    )
    lines = [head, "-" * len(head)]
    for backend, projects in results.items():
        base = {kind: statistics.median(projects[OPEN][kind]) for kind in ("call", "done")}
        for project, label in ((OPEN, "no quotas"), (LIMITED, "every quota set")):
            call, done = statistics.median(projects[project]["call"]), statistics.median(projects[project]["done"])
            lines.append(
                f"{backend:<12}{label:<22}{call * 1000:>15.3f}{p95(projects[project]['call']) * 1000:>12.3f}"
                f"{call / base['call']:>11.2f}{done * 1000:>19.3f}{done / base['done']:>11.2f}"
            )
        lines.append("")
    return "\n".join(lines)


def measure(backend: str, db_url: str, args: argparse.Namespace, directory: Path) -> tuple[Any, Any]:
    started = time.monotonic()
    with bench_platform(db_url, directory, args.population) as platform:
        seconds = requests_per_second(platform, args.requests)
        creates = create_costs(platform, args.creates)
    print(f"  {backend}: {time.monotonic() - started:.1f} s", file=sys.stderr)
    return seconds, creates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 requests and 30 creates per variant")
    parser.add_argument("--requests", type=int, default=3000, help="requests per variant (over 5 rounds)")
    parser.add_argument("--creates", type=int, default=200, help="timed creates per project")
    parser.add_argument("--population", type=int, default=20, help="VMs in each project throughout")
    parser.add_argument("--sqlite-only", action="store_true", help="no PostgreSQL cluster")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.creates = 500, 30

    requests: dict[str, dict[str, list[float]]] = {}
    creates: dict[str, dict[str, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="flexvm-bench-") as tmp:
        directory = Path(tmp) / "sqlite"
        directory.mkdir()
        requests["SQLite"], creates["SQLite"] = measure(
            "SQLite", f"sqlite:///{directory / 'flexvm.db'}", args, directory
        )
        if not args.sqlite_only:
            from tests.pg import PrivateCluster

            cluster = PrivateCluster.create()
            try:
                cluster.create_database("bench")
                directory = Path(tmp) / "postgresql"
                directory.mkdir()
                requests["PostgreSQL"], creates["PostgreSQL"] = measure(
                    "PostgreSQL", cluster.url("bench"), args, directory
                )
            finally:
                cluster.destroy()

    print(
        f"\n(a) GET /v1/vms?project={OPEN} in-process, {args.population} VMs in each of 2 projects, "
        f"{args.requests} requests per caller in {ROUNDS} rounds (median round):\n"
    )
    print(requests_table(requests))
    print(
        f"(b) VM create ({SIZE}), {args.creates} per project taking turns, {args.population} VMs in each "
        "project throughout:\n"
    )
    print(creates_table(creates))


if __name__ == "__main__":
    main()
