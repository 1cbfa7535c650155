"""Rolling maintenance on fake hosts: the plan, the run, its pauses, and its resumption.

Pins: a plan never batches two hosts holding members of one set in different fault domains; it
checks every batch's running VMs fit elsewhere (N+1) and names those that cannot move live; a scale
set below its minimum blocks it, and a plan that cannot run is refused before anything changes. A
run drains each host live, runs the hook with FLEXVM_HOST and FLEXVM_HOST_URI, waits for the host to
answer, takes it up again and brings its VMs home, so the layout ends as it began. A failing hook,
one past its timeout, a host not back in time, and an operator's pause each pause the run where it
stands (the host left drained), and resume goes on from there; cancel leaves a host whose update
began in maintenance and the others up. A server killed mid-run: the next one finishes it.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flexvm.config import Settings
from flexvm.errors import CapacityError, Conflict, InvalidInput, InvalidState, NotFound
from flexvm.maintenance.planning import set_minimum
from flexvm.maintenance.rolling import MaintenanceRequest
from flexvm.model.host import HostState
from flexvm.model.maintenance import HostPhase
from flexvm.model.operation import OperationStatus
from flexvm.model.vm import PowerState
from flexvm.platform import Platform
from flexvm.scaling.scalesets import ScaleSetSpec
from tests.unit.crash_helpers import CrashPoint, finish, servers
from tests.unit.flex_helpers import make_vm, quick_image
from tests.unit.pool_helpers import add_host, pool_settings, run, wait_for
from tests.unit.scaling_helpers import ScalingPlatform, scaling  # noqa: F401 (a fixture)


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    """For the tests on ``platform``: no local host, the hosts are the test's own."""
    return pool_settings(tmp_path, db_url)


@pytest.fixture
def pool(scaling: ScalingPlatform, small_disk: Path) -> Platform:  # noqa: F811
    """Hosts a, b, c (fault domains fd1-fd3): an availability set 'db' of three VMs, one per host,
    and a scale set 'web' of three instances; the run's settle checks are quick."""
    p = scaling.platform
    quick_image(p, small_disk)
    p.availability_sets.create("db", 3)
    for n, host in enumerate(("a", "b", "c")):
        make_vm(p, f"db{n}", "Standard_B1ls", host=host, availability_set="db", network="lan")
    run(p, p.scale_sets.create(ScaleSetSpec("web", "Standard_B1ls", "img", 3, lb_port="8080:80")), timeout=30)
    p.maintenance.probe_interval = 0.01
    return p


def layout(p: Platform) -> dict[str, tuple[str | None, PowerState]]:
    return {vm.name: (vm.host, vm.power_state) for vm in p.vms.list()}


def hook_writing(tmp_path: Path, then: str = "") -> str:
    """A hook that appends 'host uri' to a file, then runs ``then``."""
    record = tmp_path / "hooks.log"
    return f'echo "$FLEXVM_HOST $FLEXVM_HOST_URI" >> {shlex.quote(str(record))}' + (f"; {then}" if then else "")


def hooked(tmp_path: Path) -> list[str]:
    record = tmp_path / "hooks.log"
    return [line.split()[0] for line in record.read_text().splitlines()] if record.exists() else []


def at_moment(p: Platform, step: str, moment: str, action: Callable[[], object]) -> None:
    """Do ``action`` when the run reaches ``step`` at ``moment`` (the engine's failpoint)."""

    def failpoint(kind: str, at_step: str, at: str) -> None:
        if (kind, at_step, at) == ("maintenance.run", step, moment):
            action()

    p.engine.settings = dataclasses.replace(p.engine.settings, failpoint=failpoint)


def wait_state(p: Platform, state: str, timeout: float = 30.0) -> Any:
    def reached() -> Any:
        status = p.maintenance.status()
        assert status.operation.status is not OperationStatus.FAILED, status.operation.error
        return status if status.state == state else None

    return wait_for(reached, timeout, f"the maintenance run to be {state}")


# --- plans -------------------------------------------------------------------------------------


def test_the_plan_takes_one_fault_domain_at_a_time_and_fits(pool: Platform) -> None:
    before = layout(pool)
    plan = pool.maintenance.plan(None, True, parallel=3)
    # Every host holds a member of 'db' and of 'web', each in its own fault domain: one at a time.
    assert [b.hosts for b in plan.batches] == [["a"], ["b"], ["c"]]
    assert plan.fits and plan.blockers == []
    for batch in plan.batches:
        (drain,) = batch.drains
        assert {m.vm for m in drain.moves} == {vm for vm, (host, _) in before.items() if host == drain.host}
        assert all(m.mode == "live" and m.destination not in batch.hosts for m in drain.moves)
    assert [(c.name, c.minimum, c.running, c.lowest) for c in plan.sets] == [("web", 2, 3, 3)]
    assert plan.estimate_seconds == pytest.approx(sum(b.estimate_seconds for b in plan.batches))
    assert plan.estimate_seconds > 0 and plan.hook_seconds is None
    assert layout(pool) == before and all(h.state is HostState.UP for h in pool.hosts.list())


def test_hosts_without_a_shared_set_go_together(platform: Platform, small_disk: Path, tmp_path: Path) -> None:
    quick_image(platform, small_disk)
    for name in ("a", "b", "c", "d"):
        add_host(platform, name)
    platform.availability_sets.create("pair", 2)
    make_vm(platform, "p0", host="a", availability_set="pair")
    make_vm(platform, "p1", host="b", availability_set="pair")
    plan = platform.maintenance.plan(None, True, parallel=2)
    assert [b.hosts for b in plan.batches] == [["a", "c"], ["b", "d"]]
    assert plan.fits
    (batch,) = platform.maintenance.plan(["c", "d"], False, parallel=2).batches
    assert batch.hosts == ["c", "d"]


def test_a_plan_whose_vms_cannot_fit_elsewhere_is_refused_before_anything_changes(
    platform: Platform, small_disk: Path, tmp_path: Path
) -> None:
    quick_image(platform, small_disk)
    add_host(platform, "a", memory_mib=8192)
    add_host(platform, "b", memory_mib=2048)
    make_vm(platform, "large", "Standard_B2s", host="a")  # 4 GiB: b cannot take it
    make_vm(platform, "stopped", "Standard_B1s", host="a")
    run(platform, platform.vms.stop("stopped"))
    plan = platform.maintenance.plan(["a"], False)
    assert not plan.fits
    (blocker,) = plan.blockers
    assert blocker.startswith("large runs on a and cannot move live: no other host can take it")
    assert "waits here" in plan.batches[0].drains[0].stays["stopped"]  # stopped: not a blocker
    with pytest.raises(InvalidState, match="large runs on a and cannot move live"):
        platform.maintenance.start(MaintenanceRequest("true", ["a"]))
    assert platform.hosts.get("a").state is HostState.UP
    assert [op for op in platform.engine.list() if op.kind == "maintenance.run"] == []
    with pytest.raises(CapacityError):
        run(platform, platform.vms.create("more", "Standard_B2s", "img", host="b"))


def test_a_scale_set_below_its_minimum_blocks_the_plan(pool: Platform) -> None:
    pool.autoscale.set_profile("web", 3, 5, 3)
    assert set_minimum(pool.scale_sets.get("web")) == 3
    run(pool, pool.vms.stop("web-1"))
    plan = pool.maintenance.plan(None, True)
    assert any("scale set web runs 2 instance(s), below its minimum of 3" in b for b in plan.blockers)
    with pytest.raises(InvalidState, match="below its minimum of 3"):
        pool.maintenance.start(MaintenanceRequest("true", every=True))


@pytest.mark.parametrize(
    ("hosts", "every", "parallel", "hook", "error", "words"),
    [
        (None, False, 1, "true", InvalidInput, "name the hosts"),
        (["a"], True, 1, "true", InvalidInput, "name the hosts"),
        (["a", "a"], False, 1, "true", InvalidInput, "a given more than once"),
        (["nosuch"], False, 1, "true", NotFound, "nosuch"),
        (["a"], False, 0, "true", InvalidInput, "between 1 and 8"),
        (["a"], False, 1, "  ", InvalidInput, "give the command"),
        (["a"], False, 1, "true\0", InvalidInput, "NUL"),
    ],
)
def test_bad_requests_are_refused_naming_the_problem(
    platform: Platform, hosts: list[str] | None, every: bool, parallel: int, hook: str, error: type, words: str
) -> None:
    add_host(platform, "a")
    with pytest.raises(error, match=words):
        platform.maintenance.start(MaintenanceRequest(hook, hosts, every, parallel))
    assert platform.engine.list() and all(op.kind == "host.add" for op in platform.engine.list())


def test_a_host_that_is_not_up_is_refused(pool: Platform, scaling: ScalingPlatform) -> None:  # noqa: F811
    run(pool, pool.drains.drain("c"))
    with pytest.raises(InvalidState, match="c is maintenance"):
        pool.maintenance.plan(None, True)
    with pytest.raises(InvalidInput, match="hook_timeout"):
        pool.maintenance.start(MaintenanceRequest("true", ["a"], hook_timeout=0))


# --- runs --------------------------------------------------------------------------------------


def test_a_run_updates_every_host_and_brings_each_vm_home(pool: Platform, tmp_path: Path) -> None:
    before = layout(pool)
    operation = pool.maintenance.start(MaintenanceRequest(hook_writing(tmp_path), every=True))
    with pytest.raises(Conflict, match="one runs at a time"):
        pool.maintenance.start(MaintenanceRequest("true", every=True))
    done = run(pool, operation, timeout=60)
    assert hooked(tmp_path) == ["a", "b", "c"]
    uris = {line.split()[0]: line.split()[1] for line in (tmp_path / "hooks.log").read_text().splitlines()}
    assert uris == {h.name: h.uri for h in pool.hosts.list()}
    assert layout(pool) == before  # every VM home again, and running
    assert all(h.state is HostState.UP for h in pool.hosts.list())
    kinds = [op.kind for op in pool.engine.list(limit=200) if op.params.get("parent") == operation.id]
    assert kinds.count("host.drain") == 3 and kinds.count("host.return") == 3
    assert sorted(done.result["hooks"]) == ["a", "b", "c"] and len(done.result["hook_seconds"]) == 3
    status = pool.maintenance.status()
    assert status.state == "succeeded" and set(status.phases.values()) == {HostPhase.DONE}
    assert pool.maintenance.plan(None, True).hook_seconds is not None  # the next estimate counts the hook


def test_a_failing_hook_pauses_the_run_with_the_host_drained_and_resume_goes_on(pool: Platform, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    hook = hook_writing(tmp_path, f'[ "$FLEXVM_HOST" != b ] || [ -e {shlex.quote(str(flag))} ] || exit 3')
    operation = pool.maintenance.start(MaintenanceRequest(hook, every=True))
    status = wait_state(pool, "paused")
    assert "b: the hook exited with status 3" in str(status.control.reason)
    assert status.phases == {"a": HostPhase.DONE, "b": HostPhase.UPDATING, "c": HostPhase.WAITING}
    assert pool.hosts.get("b").state is HostState.MAINTENANCE
    assert [vm.name for vm in pool.vms.list() if vm.host == "b"] == []  # drained
    assert all(vm.power_state is PowerState.RUNNING for vm in pool.vms.list())
    with pytest.raises(InvalidState, match="paused already"):
        pool.maintenance.pause("ops")
    flag.touch()
    pool.maintenance.resume("ops")
    run(pool, operation, timeout=60)
    assert hooked(tmp_path) == ["a", "b", "b", "c"]  # b again, a not
    assert all(h.state is HostState.UP for h in pool.hosts.list())


def test_a_hook_past_its_timeout_is_stopped_and_cancel_leaves_its_host_drained(pool: Platform, tmp_path: Path) -> None:
    marker = tmp_path / "still-running"
    hook = f"sleep 60; touch {shlex.quote(str(marker))}"
    operation = pool.maintenance.start(MaintenanceRequest(hook, ["a", "b"], hook_timeout=1))
    status = wait_state(pool, "paused")
    assert "a: the hook ran past its timeout of 1 s and was stopped" in str(status.control.reason)
    assert not list((pool.settings.home / "maintenance" / operation.id).glob("*.pid"))
    pool.maintenance.cancel()
    done = wait_for(lambda: (op := pool.engine.get(operation.id)).status.finished and op, 30, "the cancel")
    assert done.status is OperationStatus.CANCELED
    host_a = pool.hosts.get("a")
    assert host_a.state is HostState.MAINTENANCE and "its update began" in host_a.state_reason
    assert pool.hosts.get("b").state is HostState.UP
    assert all(vm.power_state is PowerState.RUNNING for vm in pool.vms.list())
    assert not marker.exists()
    with pytest.raises(InvalidState, match="no maintenance run is under way"):
        pool.maintenance.resume("ops")


def test_a_host_not_back_in_time_pauses_the_run_until_it_answers(
    pool: Platform,
    scaling: ScalingPlatform,  # noqa: F811
    tmp_path: Path,
) -> None:
    host_a = scaling.hosts["a"].host
    at_moment(pool, "batch 1: update #1", "acted", lambda: setattr(host_a, "reachable", False))
    operation = pool.maintenance.start(MaintenanceRequest(hook_writing(tmp_path), ["a"], host_timeout=1))
    status = wait_state(pool, "paused")
    assert "a did not answer its checks within 1 s of its update" in str(status.control.reason)
    assert status.phases == {"a": HostPhase.COMING_BACK}
    host_a.reachable = True
    pool.maintenance.resume("ops")
    run(pool, operation, timeout=60)
    assert hooked(tmp_path) == ["a"]  # the hook is not run again for a host that was slow to return
    assert pool.hosts.get("a").state is HostState.UP


def test_an_operators_pause_is_taken_before_the_next_batch(pool: Platform, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    at_moment(pool, "batch 1: update #1", "started", lambda: pool.maintenance.pause("ops"))
    hook = hook_writing(tmp_path, f"[ -e {shlex.quote(str(flag))} ] || exit 3")
    operation = pool.maintenance.start(MaintenanceRequest(hook, every=True))
    # The hook fails first: that pause comes, and resuming it does not take the operator's away.
    assert "a: the hook exited with status 3" in str(wait_state(pool, "paused").control.reason)
    flag.touch()
    pool.maintenance.resume("ops")
    status = wait_for(
        lambda: (st := pool.maintenance.status()).state == "paused" and st.control.reason == "paused by ops" and st,
        30,
        "the operator's pause",
    )
    assert status.phases == {"a": HostPhase.DONE, "b": HostPhase.WAITING, "c": HostPhase.WAITING}
    assert pool.hosts.get("a").state is HostState.UP and hooked(tmp_path) == ["a", "a"]
    pool.maintenance.resume("ops")
    run(pool, operation, timeout=60)
    assert hooked(tmp_path) == ["a", "a", "b", "c"]


def test_a_server_killed_mid_run_is_followed_by_one_that_finishes_it(
    tmp_path: Path, db_url: str, small_disk: Path
) -> None:
    # Health checks (and so an updated host's checks) every 0.2 s: the second server resumes at once.
    settings = pool_settings(tmp_path, db_url, lease_seconds=1.0, health_seconds=0.2)
    with servers(settings) as group:
        first = group.open(crash=CrashPoint("maintenance.run", "batch 2: update #1", "acted"))
        quick_image(first, small_disk)
        for name in ("a", "b"):
            add_host(first, name)
        make_vm(first, "v0", host="a")
        make_vm(first, "v1", host="b")
        before = layout(first)
        operation = first.maintenance.start(MaintenanceRequest(hook_writing(tmp_path), every=True))
        wait_for(lambda: hooked(tmp_path) == ["a", "b"], 30, "the hook on b")
        second = group.open()
        done = finish(second, operation.id, timeout=60)
        assert done.status is OperationStatus.SUCCEEDED, done.error
        assert hooked(tmp_path) == ["a", "b", "b"]  # the hook that was running when it died runs again
        assert layout(second) == before
        assert all(h.state is HostState.UP for h in second.hosts.list())
        assert os.path.isdir(settings.home / "maintenance" / operation.id)


def test_a_host_that_went_down_before_its_turn_pauses_the_run(
    pool: Platform,
    scaling: ScalingPlatform,  # noqa: F811
    tmp_path: Path,
) -> None:
    host_c = scaling.hosts["c"].host

    def cut_c() -> None:
        host_c.reachable = False
        pool.health.check_all()

    at_moment(pool, "batch 2: check #1", "done", cut_c)
    operation = pool.maintenance.start(MaintenanceRequest(hook_writing(tmp_path), every=True))
    status = wait_state(pool, "paused")
    assert str(status.control.reason).startswith("host c is down")
    assert status.phases["c"] is HostPhase.WAITING and hooked(tmp_path) == ["a", "b"]
    host_c.reachable = True
    pool.health.check_all()
    pool.maintenance.resume("ops")
    run(pool, operation, timeout=60)
    assert hooked(tmp_path) == ["a", "b", "c"]


def test_a_vm_that_stopped_during_a_batch_pauses_the_run_and_resume_accepts_it(pool: Platform, tmp_path: Path) -> None:
    at_moment(pool, "batch 1: returned", "done", lambda: run(pool, pool.vms.stop("db0")))
    operation = pool.maintenance.start(MaintenanceRequest(hook_writing(tmp_path), every=True))
    status = wait_state(pool, "paused")
    assert status.control.reason == "db0 ran before and is stopped now", status.control.reason
    assert status.phases["a"] is HostPhase.CHECKING and pool.hosts.get("a").state is HostState.UP
    pool.maintenance.resume("ops")  # the operator accepts it: only a new problem pauses again
    run(pool, operation, timeout=60)
    assert hooked(tmp_path) == ["a", "b", "c"]
    assert pool.vms.get("db0").power_state is PowerState.STOPPED


def test_a_cancel_while_hosts_drain_stops_the_drains_and_takes_the_host_up_again(pool: Platform) -> None:
    at_moment(pool, "batch 1: drain #1", "done", lambda: pool.maintenance.cancel())
    operation = pool.maintenance.start(MaintenanceRequest("true", every=True))
    done = wait_for(lambda: (op := pool.engine.get(operation.id)).status.finished and op, 30, "the cancel")
    assert done.status is OperationStatus.CANCELED
    children = [op for op in pool.engine.list(limit=100) if op.params.get("parent") == operation.id]
    assert children and all(op.status.finished for op in children)
    assert pool.hosts.get("a").state is HostState.UP
    assert all(vm.power_state is PowerState.RUNNING for vm in pool.vms.list())
