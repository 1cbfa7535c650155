"""A server killed at every step of every operation that changes the world, and another finishing it.

For each operation (create, delete, start from deallocated, resize on each path, live and cold
migration, drain, scale-out, scale-in, rolling update, and a create that fails and undoes itself)
and for each moment a run reaches (a step started, its action done but not recorded, the step
recorded done, a step's compensation begun), a server is killed there as
``kill -9`` would and another server finishes the operation. With one server, the next one to
start does it; with two, the one that survived does, while it keeps serving.

In every case the operation ends as it ends without the kill, and the world is left exactly as
a run without the kill leaves it: the same records, guests, volumes, claims, addresses, DHCP
entries and HAProxy backends (nothing orphaned, nothing missing); no guest defined, started or
migrated once more than without the kill; and nothing still running.

The list of points is written out here, and a test checks that a run without a kill reaches
exactly these: a new step in any of these workflows fails that test until the matrix covers it.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flexvm.model.operation import Operation
from flexvm.platform import Platform
from tests.unit.matrix_helpers import Point, Prepared, copy_of, differences, fingerprint, keep, world
from tests.unit.matrix_scenarios import SCENARIOS, Scenario, prepare
from tests.unit.pool_helpers import wait_for
from tests.unit.waiting import wait_done

FINISH_SECONDS = 60.0


def listed(text: str) -> list[str]:
    return text.split()


POINTS: dict[str, list[str]] = {
    "create": listed(
        """
        vm.create:claim:started vm.create:claim:acted vm.create:claim:done vm.create:image:started
        vm.create:image:acted vm.create:image:done vm.create:os-disk:started vm.create:os-disk:acted
        vm.create:os-disk:done vm.create:define:started vm.create:define:acted vm.create:define:done
        vm.create:start:started vm.create:start:acted vm.create:start:done vm.create:booted:started
        vm.create:booted:acted vm.create:booted:done vm.create:wait-ready:started vm.create:wait-ready:acted
        vm.create:wait-ready:done vm.create:running:started vm.create:running:done
    """
    ),
    "create-that-fails": listed(
        """
        vm.create:claim:started vm.create:claim:acted vm.create:claim:done vm.create:image:started
        vm.create:image:acted vm.create:image:done vm.create:os-disk:started vm.create:os-disk:acted
        vm.create:os-disk:done vm.create:define:started vm.create:define:acted vm.create:define:done
        vm.create:start:started vm.create:define:undoing vm.create:os-disk:undoing vm.create:claim:undoing
    """
    ),
    "delete": listed(
        """
        vm.delete:remove:started vm.delete:remove:acted vm.delete:remove:done vm.delete:forget:started
        vm.delete:forget:acted vm.delete:forget:done
    """
    ),
    "start-deallocated": listed(
        """
        vm.start:claim:started vm.start:claim:acted vm.start:claim:done vm.start:inspect:started
        vm.start:inspect:acted vm.start:inspect:done vm.start:image:started vm.start:image:acted vm.start:image:done
        vm.start:define:started vm.start:define:acted vm.start:define:done vm.start:console:started
        vm.start:console:acted vm.start:console:done vm.start:start:started vm.start:start:acted vm.start:start:done
        vm.start:booted:started vm.start:booted:acted vm.start:booted:done vm.start:wait-ready:started
        vm.start:wait-ready:acted vm.start:wait-ready:done vm.start:running:started vm.start:running:done
    """
    ),
    "resize-hot": listed(
        """
        vm.resize:claim:started vm.resize:claim:acted vm.resize:claim:done vm.resize:console:started
        vm.resize:console:acted vm.resize:console:done vm.resize:vcpus:started vm.resize:vcpus:acted
        vm.resize:vcpus:done vm.resize:memory:started vm.resize:memory:acted vm.resize:memory:done
        vm.resize:resized:started vm.resize:resized:done vm.resize:done:started vm.resize:done:acted
        vm.resize:done:done vm.resize:confirm:started vm.resize:confirm:acted vm.resize:confirm:done
    """
    ),
    "resize-move-then-hot": listed(
        """
        vm.resize:claim:started vm.resize:claim:acted vm.resize:claim:done vm.resize:hold:started vm.resize:hold:acted
        vm.resize:hold:done vm.resize:image:started vm.resize:image:acted vm.resize:image:done
        vm.resize:prepare:started vm.resize:prepare:acted vm.resize:prepare:done vm.resize:migrate:started
        vm.resize:migrate:acted vm.resize:migrate:done vm.resize:switch:started vm.resize:switch:done
        vm.resize:moved:started vm.resize:moved:acted vm.resize:moved:done vm.resize:forget-source:started
        vm.resize:forget-source:acted vm.resize:forget-source:done vm.resize:console:started vm.resize:console:acted
        vm.resize:console:done vm.resize:memory:started vm.resize:memory:acted vm.resize:memory:done
        vm.resize:resized:started vm.resize:resized:done vm.resize:done:started vm.resize:done:acted
        vm.resize:done:done vm.resize:confirm:started vm.resize:confirm:acted vm.resize:confirm:done
    """
    ),
    "resize-restart": listed(
        """
        vm.resize:claim:started vm.resize:claim:acted vm.resize:claim:done vm.resize:stopping:started
        vm.resize:stopping:done vm.resize:shutdown:started vm.resize:shutdown:acted vm.resize:shutdown:done
        vm.resize:stopped:started vm.resize:stopped:done vm.resize:new-size:started vm.resize:new-size:done
        vm.resize:redefine:started vm.resize:redefine:acted vm.resize:redefine:done vm.resize:starting:started
        vm.resize:starting:done vm.resize:console:started vm.resize:console:acted vm.resize:console:done
        vm.resize:start:started vm.resize:start:acted vm.resize:start:done vm.resize:booted:started
        vm.resize:booted:acted vm.resize:booted:done vm.resize:wait-ready:started vm.resize:wait-ready:acted
        vm.resize:wait-ready:done vm.resize:running:started vm.resize:running:done
    """
    ),
    "migrate-live": listed(
        """
        vm.migrate-live:hold:started vm.migrate-live:hold:acted vm.migrate-live:hold:done
        vm.migrate-live:image:started vm.migrate-live:image:acted vm.migrate-live:image:done
        vm.migrate-live:prepare:started vm.migrate-live:prepare:acted vm.migrate-live:prepare:done
        vm.migrate-live:migrate:started vm.migrate-live:migrate:acted vm.migrate-live:migrate:done
        vm.migrate-live:switch:started vm.migrate-live:switch:done vm.migrate-live:moved:started
        vm.migrate-live:moved:acted vm.migrate-live:moved:done vm.migrate-live:forget-source:started
        vm.migrate-live:forget-source:acted vm.migrate-live:forget-source:done
    """
    ),
    "migrate-cold": listed(
        """
        vm.migrate-cold:hold:started vm.migrate-cold:hold:acted vm.migrate-cold:hold:done
        vm.migrate-cold:stopping:started vm.migrate-cold:stopping:done vm.migrate-cold:shutdown:started
        vm.migrate-cold:shutdown:acted vm.migrate-cold:shutdown:done vm.migrate-cold:stopped-here:started
        vm.migrate-cold:stopped-here:acted vm.migrate-cold:stopped-here:done vm.migrate-cold:stopped:started
        vm.migrate-cold:stopped:done vm.migrate-cold:image:started vm.migrate-cold:image:acted
        vm.migrate-cold:image:done vm.migrate-cold:copy:started vm.migrate-cold:copy:acted vm.migrate-cold:copy:done
        vm.migrate-cold:define:started vm.migrate-cold:define:acted vm.migrate-cold:define:done
        vm.migrate-cold:switch:started vm.migrate-cold:switch:done vm.migrate-cold:moved:started
        vm.migrate-cold:moved:acted vm.migrate-cold:moved:done vm.migrate-cold:forget-source:started
        vm.migrate-cold:forget-source:acted vm.migrate-cold:forget-source:done vm.migrate-cold:starting:started
        vm.migrate-cold:starting:done vm.migrate-cold:console:started vm.migrate-cold:console:acted
        vm.migrate-cold:console:done vm.migrate-cold:start:started vm.migrate-cold:start:acted
        vm.migrate-cold:start:done vm.migrate-cold:booted:started vm.migrate-cold:booted:acted
        vm.migrate-cold:booted:done vm.migrate-cold:wait-ready:started vm.migrate-cold:wait-ready:acted
        vm.migrate-cold:wait-ready:done vm.migrate-cold:running:started vm.migrate-cold:running:done
    """
    ),
    "drain": listed(
        """
        host.drain:hold:started host.drain:hold:acted host.drain:hold:done host.drain:start-1:started
        host.drain:start-1:done vm.migrate-live:hold:started vm.migrate-live:hold:acted vm.migrate-live:hold:done
        vm.migrate-live:image:started vm.migrate-live:image:acted vm.migrate-live:image:done
        vm.migrate-live:prepare:started vm.migrate-live:prepare:acted vm.migrate-live:prepare:done
        vm.migrate-live:migrate:started vm.migrate-live:migrate:acted vm.migrate-live:migrate:done
        vm.migrate-live:switch:started vm.migrate-live:switch:done vm.migrate-live:moved:started
        vm.migrate-live:moved:acted vm.migrate-live:moved:done vm.migrate-live:forget-source:started
        vm.migrate-live:forget-source:acted host.drain:wait-1:started vm.migrate-live:forget-source:done
        host.drain:wait-1:acted host.drain:wait-1:done host.drain:start-2:started host.drain:start-2:done
        host.drain:wait-2:started vm.migrate-live:hold:started#2 vm.migrate-live:hold:acted#2
        vm.migrate-live:hold:done#2 vm.migrate-live:image:started#2 vm.migrate-live:image:acted#2
        vm.migrate-live:image:done#2 vm.migrate-live:prepare:started#2 vm.migrate-live:prepare:acted#2
        vm.migrate-live:prepare:done#2 vm.migrate-live:migrate:started#2 vm.migrate-live:migrate:acted#2
        vm.migrate-live:migrate:done#2 vm.migrate-live:switch:started#2 vm.migrate-live:switch:done#2
        vm.migrate-live:moved:started#2 vm.migrate-live:moved:acted#2 vm.migrate-live:moved:done#2
        vm.migrate-live:forget-source:started#2 vm.migrate-live:forget-source:acted#2
        vm.migrate-live:forget-source:done#2 host.drain:wait-2:acted host.drain:wait-2:done
    """
    ),
    "scale-out": listed(
        """
        scaleset.scale:target:started scaleset.scale:target:acted scaleset.scale:target:done
        scaleset.scale:converge:started vm.create:claim:started vm.create:claim:acted vm.create:claim:done
        vm.create:image:started vm.create:image:acted vm.create:image:done vm.create:os-disk:started
        vm.create:os-disk:acted vm.create:os-disk:done vm.create:define:started vm.create:define:acted
        vm.create:define:done vm.create:start:started vm.create:start:acted vm.create:start:done
        vm.create:booted:started vm.create:booted:acted vm.create:booted:done vm.create:wait-ready:started
        vm.create:wait-ready:acted vm.create:wait-ready:done vm.create:running:started vm.create:running:done
        scaleset.scale:converge:acted scaleset.scale:converge:done
    """
    ),
    "scale-in": listed(
        """
        scaleset.scale:target:started scaleset.scale:target:acted scaleset.scale:target:done
        scaleset.scale:converge:started vm.delete:remove:started vm.delete:remove:acted vm.delete:remove:done
        vm.delete:forget:started vm.delete:forget:acted vm.delete:forget:done scaleset.scale:converge:acted
        scaleset.scale:converge:done
    """
    ),
    "rolling-update": listed(
        """
        scaleset.update:target:started scaleset.update:target:acted scaleset.update:target:done
        scaleset.update:converge:started vm.create:claim:started vm.create:claim:acted vm.create:claim:done
        vm.create:image:started vm.create:image:acted vm.create:image:done vm.create:os-disk:started
        vm.create:os-disk:acted vm.create:os-disk:done vm.create:define:started vm.create:define:acted
        vm.create:define:done vm.create:start:started vm.create:start:acted vm.create:start:done
        vm.create:booted:started vm.create:booted:acted vm.create:booted:done vm.create:wait-ready:started
        vm.create:wait-ready:acted vm.create:wait-ready:done vm.create:running:started vm.create:running:done
        vm.delete:remove:started vm.delete:remove:acted vm.delete:remove:done vm.delete:forget:started
        vm.delete:forget:acted vm.delete:forget:done vm.create:claim:started#2 vm.create:claim:acted#2
        vm.create:claim:done#2 vm.create:image:started#2 vm.create:image:acted#2 vm.create:image:done#2
        vm.create:os-disk:started#2 vm.create:os-disk:acted#2 vm.create:os-disk:done#2 vm.create:define:started#2
        vm.create:define:acted#2 vm.create:define:done#2 vm.create:start:started#2 vm.create:start:acted#2
        vm.create:start:done#2 vm.create:booted:started#2 vm.create:booted:acted#2 vm.create:booted:done#2
        vm.create:wait-ready:started#2 vm.create:wait-ready:acted#2 vm.create:wait-ready:done#2
        vm.create:running:started#2 vm.create:running:done#2 vm.delete:remove:started#2 vm.delete:remove:acted#2
        vm.delete:remove:done#2 vm.delete:forget:started#2 vm.delete:forget:acted#2 vm.delete:forget:done#2
        scaleset.update:converge:acted scaleset.update:converge:done
    """
    ),
}


def point_of(text: str) -> Point:
    where, _, nth = text.partition("#")
    kind, step, moment = where.split(":")
    return Point(kind, step, moment, int(nth or 1))


def mode_of(index: int) -> str:
    """Every other point is finished by a server started after the kill, the others by one that
    ran beside the killed one all along: both ways through every workflow, each point once."""
    return "restart" if index % 2 == 0 else "survivor"


CASES = [
    pytest.param(name, point_of(text), mode_of(i), id=f"{name}-{text}-{mode_of(i)}")
    for name, texts in POINTS.items()
    for i, text in enumerate(texts)
]


@dataclass
class Outcome:
    operation: Operation
    fingerprint: dict[str, Any]
    calls: dict[str, int]
    reached: list[Point]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Prepared]:
    """Each scenario's world, set up once (when first asked for) and copied for every case."""
    disk = tmp_path_factory.mktemp("matrix") / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)

    class Worlds(dict[str, Prepared]):
        def __missing__(self, name: str) -> Prepared:
            with world(tmp_path_factory.mktemp(f"prepared-{name}")) as made:
                prepare(made, SCENARIOS[name], disk)
            self[name] = keep(made)
            return self[name]

    return Worlds()


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory: pytest.TempPathFactory, prepared: dict[str, Prepared]) -> dict[str, Outcome]:
    """Each scenario run once without a kill, as the cases' baseline (made when first asked for)."""

    class Runs(dict[str, Outcome]):
        def __missing__(self, name: str) -> Outcome:
            self[name] = clean_run(tmp_path_factory.mktemp(f"clean-{name}"), SCENARIOS[name], prepared[name])
            return self[name]

    return Runs()


def settle(server: Platform) -> None:
    """Wait for every operation to end, not only the one asked for: a scale set's converge may
    admit an instance whose create, resumed on its own, is still writing its last record."""
    wait_for(lambda: all(op.status.finished for op in server.runner.list()), FINISH_SECONDS, "every operation to end")


def clean_run(tmp_path: Path, scenario: Scenario, prepared: Prepared) -> Outcome:
    with copy_of(prepared, tmp_path) as w:
        server = w.open()
        done = wait_done(server, scenario.act(server).id, FINISH_SECONDS)
        settle(server)
        return Outcome(done, fingerprint(w, server), w.counted_calls(), list(w.reached))


def crashed_run(tmp_path: Path, scenario: Scenario, prepared: Prepared, point: Point, mode: str) -> tuple[Outcome, str]:
    """Kill the server that runs the operation at ``point``; return how another one finished it
    (and that other server's id)."""
    with copy_of(prepared, tmp_path) as w:
        first = w.open(crash=point)
        beside = w.open() if mode == "survivor" else None
        operation = scenario.act(first)
        wait_for(lambda: point in w.reached or first.runner.get(operation.id).status.finished, 30, f"{point.id}")
        assert point in w.reached, f"the operation finished without reaching {point.id}"
        second = beside or w.open()
        done = wait_done(second, operation.id, FINISH_SECONDS)
        settle(second)
        return Outcome(done, fingerprint(w, second), w.counted_calls(), list(w.reached)), second.engine.server_id


@pytest.mark.parametrize("name", list(POINTS))
def test_the_matrix_covers_every_point_a_run_reaches(name: str, clean_runs: dict[str, Outcome]) -> None:
    clean = clean_runs[name]
    assert clean.operation.status.value == SCENARIOS[name].ends, clean.operation.error
    reached = Counter(p.id for p in clean.reached)
    written = Counter(POINTS[name])
    missing, gone = sorted(reached - written), sorted(written - reached)
    assert reached == written, f"not in the matrix: {missing}; no longer reached: {gone}"


@pytest.mark.parametrize(("name", "point", "mode"), CASES)
def test_a_server_killed_here_changes_nothing_in_the_end(
    name: str,
    point: Point,
    mode: str,
    clean_runs: dict[str, Outcome],
    prepared: dict[str, Prepared],
    tmp_path: Path,
) -> None:
    clean = clean_runs[name]
    got, finisher = crashed_run(tmp_path, SCENARIOS[name], prepared[name], point, mode)

    assert got.operation.status == clean.operation.status, got.operation.error
    assert (got.operation.error or {}).get("code") == (clean.operation.error or {}).get("code"), got.operation.error
    assert got.operation.owner == finisher, "the server that finished it is its owner"
    changed = differences(clean.fingerprint, got.fingerprint)
    assert not changed, "the world differs from a run without the kill:\n" + "\n".join(changed)
    assert got.calls == clean.calls, "defined, started or migrated a guest a different number of times"
