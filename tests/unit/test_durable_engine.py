"""The engine itself: steps recorded and replayed, compensations newest first, takeover of a dead
server's operations (exactly one server wins), fencing, cancel, and the leader lease.

The workflows here are small ones registered by the tests, so each rule is seen on its own; the
platform's own workflows are crashed at every step in test_crash_matrix.py.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flexvm.errors import InvalidState, LeaseLost, OperationFailed
from flexvm.model.operation import OperationStatus, StepStatus
from flexvm.operations.engine import Engine, EngineSettings
from flexvm.operations.run import Run, Stop
from flexvm.operations.servers import ServerRegistry
from flexvm.store.db import Database, open_database
from flexvm.store.repositories import OperationRepo
from flexvm.store.tables import ServerRow
from tests.helpers import wait_for


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """On each backend (SQLite and the private PostgreSQL: see tests/conftest.py)."""
    database = open_database(db_url)
    yield database
    database.engine.dispose()


class World:
    """What the test workflows act on: a log of actions, as a hypervisor would keep its guests."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self.log: list[str] = []
        self.gate = threading.Event()


def register(engine: Engine, world: World, fail_at: str | None = None) -> None:
    def make(name: str) -> None:
        world.log.append(f"make {name}")
        if name not in world.made:  # check, then act
            world.made.append(name)
        if name == fail_at:
            raise OperationFailed(f"{name} failed for good")

    def unmake(name: str) -> None:
        world.log.append(f"unmake {name}")
        world.made.remove(name)

    def three(run: Run) -> dict[str, Any]:
        for name in ("a", "b", "c"):
            run.step(name, lambda name=name: make(name), undo=lambda _out, name=name: unmake(name))
        return {"made": list(world.made)}

    def waits(run: Run) -> dict[str, Any]:
        run.step("first", lambda: make("first"), undo=lambda _out: unmake("first"))
        run.step("wait", lambda: world.gate.wait(10))
        for _ in range(200):
            run.check_canceled()
            time.sleep(0.01)
        run.step("last", lambda: make("last"))
        return {}

    engine.register("test.three", three)
    engine.register("test.waits", waits, cancelable=True)


def engine_for(db: Database, world: World) -> Engine:
    engine = Engine(db, EngineSettings(lease_seconds=2.0, poll_seconds=0.05))
    register(engine, world)
    engine.start()
    return engine


def submit(engine: Engine, kind: str) -> str:
    with engine.db.session() as session:
        operation = engine.record(session, kind, "test", "t1")
    engine.launch(operation)
    return operation.id


def test_steps_run_in_order_and_are_recorded_with_their_server(db: Database) -> None:
    world = World()
    engine = engine_for(db, world)
    done = wait_done_engine(engine, submit(engine, "test.three"))
    assert done.status is OperationStatus.SUCCEEDED
    assert [(s.name, s.status) for s in done.steps] == [(n, StepStatus.DONE) for n in "abc"]
    assert {s.server for s in done.steps} == {engine.server_id}
    assert done.result == {"made": ["a", "b", "c"]}
    engine.close()


def test_a_step_that_fails_undoes_the_done_ones_newest_first(db: Database) -> None:
    world = World()
    engine = Engine(db, EngineSettings(lease_seconds=2.0, poll_seconds=0.05))
    register(engine, world, fail_at="c")
    engine.start()
    done = wait_done_engine(engine, submit(engine, "test.three"))
    assert done.status is OperationStatus.FAILED
    assert done.error is not None and done.error["message"] == "c failed for good"
    assert world.log == ["make a", "make b", "make c", "unmake b", "unmake a"]
    assert [s.status for s in done.steps] == [StepStatus.UNDONE, StepStatus.UNDONE, StepStatus.FAILED]
    engine.close()


def test_a_dead_servers_operation_is_resumed_where_it_stood_and_finished(db: Database) -> None:
    world = World()
    first = engine_for(db, world)
    op_id = submit(first, "test.waits")
    wait_for(lambda: len(first.get(op_id).steps) == 2, 5, "the run reached its wait")
    first.abandon()  # killed while waiting: "first" done, "wait" running
    world.gate.set()
    second = engine_for(db, world)
    done = wait_done_engine(second, op_id)
    assert done.status is OperationStatus.SUCCEEDED
    assert world.log.count("make first") == 1  # a done step is not run again
    wait_step = done.steps[1]
    assert (wait_step.attempts, wait_step.server) == (2, second.server_id)  # the interrupted one is
    assert done.result["resumed"][0]["server"] == second.server_id
    assert done.claims == 2
    second.close()


def test_two_servers_racing_for_an_orphan_run_it_once(db: Database) -> None:
    world = World()
    first = engine_for(db, world)
    op_id = submit(first, "test.waits")
    wait_for(lambda: len(first.get(op_id).steps) == 2, 5, "the run reached its wait")
    first.abandon()
    world.gate.set()
    racers = [engine_for(db, world) for _ in range(3)]
    done = wait_done_engine(racers[0], op_id)
    assert done.status is OperationStatus.SUCCEEDED
    assert world.log.count("make last") == 1
    assert done.claims == 2  # the first claim plus exactly one takeover
    for engine in racers:
        engine.close()


def take_over(db: Database, op_id: str) -> None:
    """Another server claims the operation, as if its owner had been paused past its lease."""
    with db.session() as session:
        row = OperationRepo(session).row(op_id, lock=True)
        assert row is not None
        row.owner, row.fence = "someone-else", row.fence + 1


def test_a_server_that_lost_its_lease_cannot_record_anything(db: Database) -> None:
    world = World()
    first = engine_for(db, world)
    op_id = submit(first, "test.waits")
    wait_for(lambda: len(first.get(op_id).steps) == 2, 5, "the run reached its wait")
    # Another server takes the operation over, as if the first had been paused past its lease.
    take_over(db, op_id)
    world.gate.set()
    wait_for(lambda: op_id not in first.running(), 5, "the first server stopped its run")
    after = first.get(op_id)
    assert after.status is OperationStatus.RUNNING  # it wrote nothing more: no "done", no "last"
    assert [s.name for s in after.steps] == ["first", "wait"]
    assert "make last" not in world.log
    first.abandon()


def test_a_server_that_lost_its_lease_cannot_write_from_inside_a_step_either(db: Database) -> None:
    """A long step that writes records of its own as it goes (a scale set's converge) writes them
    through run.fenced(): once another server owns the operation, nothing gets through."""
    world = World()
    engine = Engine(db, EngineSettings(lease_seconds=2.0, poll_seconds=0.05))

    def long_step(run: Run) -> None:
        with run.fenced():
            world.log.append("wrote while it owned the operation")
        world.gate.wait(10)
        with run.fenced():
            world.log.append("wrote after losing it")

    engine.register("test.long", lambda run: run.step("long", lambda: long_step(run)))
    engine.start()
    op_id = submit(engine, "test.long")
    wait_for(lambda: world.log, 5, "the step's first write")
    take_over(db, op_id)
    world.gate.set()
    wait_for(lambda: op_id not in engine.running(), 5, "the server stopped its run")
    assert world.log == ["wrote while it owned the operation"]
    assert engine.get(op_id).status is OperationStatus.RUNNING
    engine.abandon()


def test_cancel_stops_at_the_next_boundary_and_compensates(db: Database) -> None:
    world = World()
    engine = engine_for(db, world)
    op_id = submit(engine, "test.waits")
    world.gate.set()
    wait_for(lambda: len(engine.get(op_id).steps) >= 2, 5, "the run passed its first step")
    engine.cancel(op_id)
    done = wait_done_engine(engine, op_id)
    assert done.status is OperationStatus.CANCELED
    assert "unmake first" in world.log and "make last" not in world.log
    with pytest.raises(InvalidState, match="already finished"):
        engine.cancel(op_id)
    engine.close()


def test_an_operation_that_cannot_be_canceled_says_so(db: Database) -> None:
    world = World()
    engine = engine_for(db, world)
    op_id = submit(engine, "test.three")
    with pytest.raises(InvalidState, match="cannot be canceled|already finished"):
        engine.cancel(op_id)
    engine.close()


def test_one_leader_at_a_time_and_a_stale_one_is_refused(db: Database) -> None:
    world = World()
    first, second = engine_for(db, world), engine_for(db, world)
    assert [first.leader.is_leader(), second.leader.is_leader()].count(True) == 1
    leader, other = (first, second) if first.leader.is_leader() else (second, first)
    # The leader is paused (alive, but it renews nothing): its lease runs out and the other takes the role.
    leader._closing.set()  # its upkeep loop ends; it is not seen dead, as a SIGSTOPped process is not
    wait_for(lambda: (other.leader.tick(), other.leader.is_leader())[1], 10, "the other server leads")
    with pytest.raises(LeaseLost, match="no longer leads"), leader.leader.fenced(), db.session():
        pass  # the guard refuses the transaction before anything can be written in it
    assert other.leader.as_leader(lambda: None) is True
    assert leader.leader.as_leader(lambda: None) is False
    leader.abandon()
    other.close()


def test_a_leader_seen_dead_hands_its_role_over_without_waiting_for_its_lease(db: Database) -> None:
    lease = 30.0
    first = Engine(db, EngineSettings(lease_seconds=lease, poll_seconds=0.05))
    first.start()
    assert first.leader.is_leader()
    second = Engine(db, EngineSettings(lease_seconds=lease, poll_seconds=0.05))
    second.start()
    assert not second.leader.is_leader()
    started = time.monotonic()
    first.abandon()  # as kill -9 on this machine: its process is seen gone
    wait_for(second.leader.is_leader, 5, "the other server to lead")
    assert time.monotonic() - started < lease / 3, "taken at once, not at the lease's next renewal"
    with pytest.raises(LeaseLost), first.leader.fenced(), db.session():
        pass
    second.close()


def test_a_server_is_judged_dead_by_its_pid_only_on_its_own_machine(db: Database) -> None:
    """A pid means something only in the kernel and pid namespace that gave it: a row with this
    hostname but another machine (a cloned host, a container with the host's name) is left to
    its lease, however dead its pid looks from here."""
    me = ServerRegistry(db)
    me.register()
    gone_pid = subprocess.Popen(["true"])
    gone_pid.wait()  # a pid whose process has ended
    now = time.time()
    with db.session() as session:
        for server_id, machine in (("here", me.machine), ("elsewhere", "another-boot/4026531836")):
            session.add(
                ServerRow(
                    id=server_id,
                    hostname=me.hostname,
                    machine=machine,
                    pid=gone_pid.pid,
                    process_started="12345",
                    started_at=now,
                    heartbeat=now,
                )
            )
    assert me.dead_here(within=60) == {"here"}
    me.stopped()


def wait_done_engine(engine: Engine, op_id: str, timeout: float = 15.0):  # noqa: ANN201
    deadline = time.monotonic() + timeout
    while True:
        operation = engine.get(op_id)
        if operation.status.finished:
            return operation
        if time.monotonic() > deadline:
            raise AssertionError(f"operation {op_id} still {operation.status.value}")
        time.sleep(0.02)


def test_stop_is_not_an_error_a_workflow_can_catch() -> None:
    assert not issubclass(Stop, Exception)
