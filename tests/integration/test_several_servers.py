"""Two real `flexvm serve` processes on one PostgreSQL (and one FLEXVM_HOME, as on one machine),
creating real guests: any server answers, one leads, and when the one running a create dies — or
is paused past its lease — the other finishes the create, exactly once.

The private cluster is the test session's own (tests/pg.py); leases are 3 s here so the lease
path is quick to see.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FlexvmServer, domains, import_tiny_copy, unique, wait_for
from tests.pg import PrivateCluster

LEASE = 3.0


@dataclasses.dataclass
class Pair:
    first: FlexvmServer
    second: FlexvmServer
    image: str

    def both(self) -> tuple[FlexvmServer, FlexvmServer]:
        return self.first, self.second


@pytest.fixture
def pair(
    tmp_path: Path, pg_cluster: PrivateCluster, server: FlexvmServer, tiny: str, run_prefix: str
) -> Iterator[Pair]:
    database = f"servers_{unique('db').replace('-', '_')}"
    pg_cluster.create_database(database)
    env = {
        "FLEXVM_DB_URL": pg_cluster.url(database),
        "FLEXVM_LEASE_SECONDS": str(LEASE),
        "FLEXVM_TAKEOVER_POLL_SECONDS": "0.2",
        "FLEXVM_READY_TIMEOUT": "90",
    }
    home = tmp_path / "shared-home"
    first, second = FlexvmServer(home, dict(env)), FlexvmServer(home, dict(env))
    first.start()
    second.start()
    image = f"{run_prefix}-pair"
    import_tiny_copy(server, first, tiny, image)
    try:
        yield Pair(first, second, image)
    finally:
        for srv in (first, second):
            if srv.proc is not None and srv.proc.poll() is None:
                srv.proc.send_signal(signal.SIGCONT)  # a paused one must be able to stop
        survivor = next((s for s in (first, second) if s.proc is not None and s.proc.poll() is None), None)
        if survivor is not None:
            with survivor.api() as api:
                for vm in api.get("/vms").json():
                    op = api.delete(f"/vms/{vm['name']}").json()
                    survivor.wait_operation(op["id"])
                api.delete(f"/images/{image}")
        for srv in (first, second):
            srv.stop()
        pg_cluster.drop_database(database)


def servers_seen(srv: FlexvmServer) -> list[dict]:  # type: ignore[type-arg]
    with srv.api() as api:
        return list(api.get("/servers").json())


def create_until_booting(srv: FlexvmServer, name: str, image: str) -> str:
    with srv.api() as api:
        operation_id = str(api.post("/vms", json={"name": name, "size": "Standard_B1ls", "image": image}).json()["id"])

        def booting() -> bool:
            op = api.get(f"/operations/{operation_id}").json()
            return any(s["name"] == "wait-ready" and s["status"] == "running" for s in op["steps"])

        wait_for(booting, 90, "the create to wait for its guest", interval=0.05)
    return operation_id


def owner_of(srv: FlexvmServer, operation_id: str) -> str:
    with srv.api() as api:
        return str(api.get(f"/operations/{operation_id}").json()["owner"])


def server_id(srv: FlexvmServer) -> str:
    assert srv.proc is not None
    return next(s["id"] for s in servers_seen(srv) if s["pid"] == srv.proc.pid)


def test_both_servers_answer_and_exactly_one_leads(pair: Pair) -> None:
    wait_for(lambda: [s["leader"] for s in servers_seen(pair.first)].count(True) == 1, 15, "one leader")
    for srv in pair.both():
        seen = servers_seen(srv)
        assert sorted(s["state"] for s in seen) == ["up", "up"]
        assert [s["leader"] for s in seen].count(True) == 1
    listed = pair.second.ok("server", "list").stdout
    assert listed.count(" up ") == 2 and "yes" in listed, listed


def test_a_killed_servers_create_is_finished_by_the_other(pair: Pair, run_prefix: str) -> None:
    name = unique(run_prefix)
    operation_id = create_until_booting(pair.first, name, pair.image)
    runner = owner_of(pair.first, operation_id)
    dying, survivor = (pair.first, pair.second) if runner == server_id(pair.first) else (pair.second, pair.first)
    killed_at = time.monotonic()
    dying.kill()
    done = survivor.wait_operation(operation_id)
    took = time.monotonic() - killed_at
    assert done["status"] == "succeeded", done["error"]
    assert done["owner"] == server_id(survivor) and done["claims"] == 2
    assert [d for d in domains() if d == name] == [name]
    with survivor.api() as api:
        assert api.get(f"/vms/{name}").json()["power_state"] == "running"
    # Same machine, process gone: taken over without waiting for the lease (plus the guest's boot).
    assert took < 60, took
    states = {s["id"]: s["state"] for s in servers_seen(survivor)}
    assert "gone" in states.values(), states


def test_a_paused_server_loses_its_create_and_cannot_write_when_it_wakes(pair: Pair, run_prefix: str) -> None:
    name = unique(run_prefix)
    operation_id = create_until_booting(pair.first, name, pair.image)
    runner = owner_of(pair.first, operation_id)
    paused, survivor = (pair.first, pair.second) if runner == server_id(pair.first) else (pair.second, pair.first)
    assert paused.proc is not None
    paused.proc.send_signal(signal.SIGSTOP)  # alive but silent: only its lease running out tells
    try:
        done = survivor.wait_operation(operation_id, timeout=120)
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    assert done["status"] == "succeeded", done["error"]
    assert done["owner"] == server_id(survivor)
    wait_step = next(s for s in done["steps"] if s["name"] == "wait-ready")
    assert wait_step["server"] == server_id(survivor) and wait_step["attempts"] == 2
    # The woken server's run of that step finds its fencing number stale: it records nothing more
    # (watched for a few of its poll intervals).
    watch_until = time.monotonic() + 3
    while time.monotonic() < watch_until:
        assert survivor.wait_operation(operation_id)["steps"] == done["steps"]
        time.sleep(0.2)
    assert [d for d in domains() if d == name] == [name]
    with paused.api() as api:  # and it still answers the API, as a server among others
        assert api.get(f"/operations/{operation_id}").json()["status"] == "succeeded"
