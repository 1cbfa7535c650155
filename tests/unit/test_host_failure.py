"""Failure handling on fake hosts: suspect, failed, fenced, and the VMs started elsewhere.

Pins: a host without a fence agent goes down as before; with one it is suspect from its first
missed check and back up with nothing done if it answers before it fails; missing checks is not
enough without the agent's second opinion; a failed host is fenced before anything restarts, then
its HA VMs on shared storage start on another host in priority order (no quota in the way), the
others wait, saying why, and come back with it; a fence that fails restarts nothing; two hosts
failing at once are held with an alert; manual fencing waits for an operator's word; and a host
whose guests still run (an unfenced partition) cannot have them started twice (the lock manager).
"""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from flexvm.compute.hosts import HostChanges
from flexvm.config import Settings
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import FenceFailed, InvalidInput, InvalidState
from flexvm.fencing import ipmi
from flexvm.fencing.agents import Fencer, Opinion, check_options
from flexvm.model.guest import GuestState
from flexvm.model.host import FenceAgent, Host, HostState
from flexvm.model.vm import PowerState
from flexvm.platform import Platform
from flexvm.scaling.scalesets import ScaleSetSpec
from flexvm.store.repositories import LeftoverRepo
from tests.unit.flex_helpers import make_vm, quick_image
from tests.unit.pool_helpers import add_host, pool_settings, run
from tests.unit.scaling_helpers import ScalingPlatform, scaling  # noqa: F401 (a fixture)


class PowerSwitch(Fencer):
    """The fake hosts' fence agent: its second opinion is whether the host is powered (a
    partition leaves it powered and unreachable), and powering it off takes its guests down."""

    kind = FenceAgent.LAB

    def __init__(self, driver: FakeDriver, log: list[str], fails: bool = False) -> None:
        super().__init__("fake", {})
        self.driver, self.log, self.fails = driver, log, fails
        self.powered = True

    def second_opinion(self) -> Opinion:
        if self.driver.host.reachable:
            return Opinion(False, "the switch sees it")
        return Opinion(True, "the switch cannot reach it either")

    def power_off(self) -> str:
        if self.fails:
            raise FenceFailed("the power switch does not answer")
        self.log.append(f"power-off {self.driver.uri}")
        self.driver.host.guests.clear()  # a power cut: every guest is gone
        self.powered = False
        return "powered off"

    def confirm_off(self) -> str:
        if self.powered:
            raise FenceFailed("it still has power")
        return "no power"


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url, fail_seconds=0.0)


@pytest.fixture
def shared() -> str:
    return f"/srv/flexvm-ha-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fenced_log() -> list[str]:
    return []


@pytest.fixture
def hosts(platform: Platform, small_disk: Path, shared: str, fenced_log: list[str]) -> dict[str, FakeDriver]:
    quick_image(platform, small_disk)
    drivers = {
        name: add_host(platform, name, fence_agent=FenceAgent.LAB, fence_options={"root": "/fake", "host": name})
        for name in ("a", "b", "c")
    }
    switches = {d.uri: PowerSwitch(d, fenced_log) for d in drivers.values()}

    def agent_of(host: Host) -> Fencer | None:
        return switches.get(host.uri) if host.fence_agent is FenceAgent.LAB else None

    platform.failover.agent_of = agent_of
    platform.storage.add("nas", shared)
    return drivers


def settle(platform: Platform) -> None:
    """A round of health checks, and the fence it may start waited for (with its restarts)."""
    platform.health.check_all()
    for operation in platform.engine.list():
        if operation.kind in ("host.fence", "vm.restart-elsewhere") and not operation.status.finished:
            platform.engine.wait(operation.id, 30)


def fence_of(platform: Platform, host: str) -> Any:
    fence = platform.failover.last_fence(host)
    assert fence is not None, f"no fence of {host}"
    return fence


# --- detection -------------------------------------------------------------------------------


def test_a_host_without_a_fence_agent_is_only_marked_down(platform: Platform, hosts: dict[str, FakeDriver]) -> None:
    platform.hosts.update("c", HostChanges(fence_agent=FenceAgent.NONE))
    hosts["c"].host.reachable = False
    settle(platform)
    assert platform.hosts.get("c").state is HostState.DOWN
    assert platform.failover.last_fence("c") is None


def test_a_host_that_answers_again_before_it_fails_is_up_with_nothing_done(
    platform: Platform, hosts: dict[str, FakeDriver]
) -> None:
    platform.failover.settings = dataclasses.replace(platform.settings, fail_seconds=3600.0)
    make_vm(platform, "db", storage="nas", ha=True)
    hosts["a"].host.reachable = False
    settle(platform)
    host = platform.hosts.get("a")
    assert host.state is HostState.SUSPECT and host.suspect_since is not None
    hosts["a"].host.reachable = True
    settle(platform)
    host = platform.hosts.get("a")
    assert host.state is HostState.UP and host.suspect_since is None
    vm = platform.vms.get("db")
    assert vm.host == "a" and vm.power_state is PowerState.RUNNING and vm.unavailable is None
    assert platform.failover.last_fence("a") is None


def test_missed_checks_are_not_enough_when_the_agent_still_sees_the_host(
    platform: Platform, hosts: dict[str, FakeDriver]
) -> None:
    platform.failover.agent_of = lambda host: Disagrees()
    hosts["a"].host.reachable = False
    settle(platform)
    settle(platform)
    host = platform.hosts.get("a")
    assert host.state is HostState.SUSPECT
    assert "but the switch still sees it" in host.state_reason
    assert platform.failover.last_fence("a") is None


class Disagrees(PowerSwitch):
    def __init__(self) -> None:
        Fencer.__init__(self, "a", {})

    def second_opinion(self) -> Opinion:
        return Opinion(False, "the switch still sees it")


# --- fencing and restarts --------------------------------------------------------------------


def test_a_failed_host_is_fenced_then_its_ha_vms_start_elsewhere_and_the_rest_wait(
    platform: Platform, hosts: dict[str, FakeDriver], fenced_log: list[str]
) -> None:
    make_vm(platform, "db", storage="nas", ha=True)
    make_vm(platform, "local")  # its disk lives on a only
    make_vm(platform, "cold", storage="nas")  # shared, but HA is off
    hosts["a"].host.reachable = False
    settle(platform)

    assert fenced_log == [f"power-off {hosts['a'].uri}"]
    assert platform.hosts.get("a").state is HostState.FENCED
    db = platform.vms.get("db")
    assert db.host in ("b", "c") and db.power_state is PowerState.RUNNING and db.unavailable is None
    assert hosts[db.host].host.guests[db.domain_name].state is GuestState.RUNNING
    for name in ("local", "cold"):
        vm = platform.vms.get(name)
        assert vm.host == "a" and vm.power_state is PowerState.UNKNOWN
        assert vm.unavailable and "fenced" in vm.unavailable
    assert "only on host a" in str(platform.vms.get("local").unavailable)

    fence = fence_of(platform, "a")
    result = fence.result
    assert fence.status.value == "succeeded"
    assert result["detected_at"] <= result["failed_at"] <= result["fenced_at"]
    assert [(r["vm"], r["to"], r["status"]) for r in result["restarted"]] == [("db", db.host, "succeeded")]
    assert set(result["unavailable"]) == {"local", "cold"}
    restart = next(op for op in platform.engine.list() if op.kind == "vm.restart-elsewhere")
    assert restart.target_name == "db" and restart.result["to"] == db.host
    with platform.db.session() as session:
        assert [(x.kind, x.name) for x in LeftoverRepo(session).on_host("a")] == [("domain", db.domain_name)]

    # a comes back (powered on, its guests gone): its leftover goes, the others start again there.
    hosts["a"].host.reachable = True
    settle(platform)
    assert platform.hosts.get("a").state is HostState.UP
    with platform.db.session() as session:
        assert LeftoverRepo(session).on_host("a") == []
    for operation in platform.engine.list():
        if not operation.status.finished:
            platform.engine.wait(operation.id, 30)
    local = platform.vms.get("local")
    assert local.unavailable is None and local.power_state is PowerState.RUNNING and local.host == "a"
    assert platform.vms.get("db").host == db.host  # not moved back, not run twice
    assert db.domain_name not in hosts["a"].host.guests


def test_higher_priorities_restart_first_and_one_that_fits_nowhere_waits_saying_why(
    platform: Platform, hosts: dict[str, FakeDriver]
) -> None:
    platform.hosts.update("c", HostChanges(fence_agent=FenceAgent.NONE))
    hosts["c"].host.reachable = False  # c is down (no agent): only b can take anything
    platform.health.check_all()
    platform.hosts.update("b", HostChanges(advertised_memory_mib=1024 + 512))  # room for one B1s only
    make_vm(platform, "low", storage="nas", ha=True, ha_priority=1)
    make_vm(platform, "high", storage="nas", ha=True, ha_priority=900)
    hosts["a"].host.reachable = False
    settle(platform)
    assert platform.vms.get("high").host == "b"
    low = platform.vms.get("low")
    assert low.host == "a" and "no other host can take it" in str(low.unavailable)
    restarted = fence_of(platform, "a").result["restarted"]
    assert [r["vm"] for r in restarted] == ["high", "low"] and "skipped" in restarted[1]


def test_a_restart_is_not_held_back_by_the_projects_quota(platform: Platform, hosts: dict[str, FakeDriver]) -> None:
    make_vm(platform, "db", storage="nas", ha=True)
    platform.projects.set_quotas("default", {"vms": 1, "vcpus": 1})  # full: nothing new may be made
    hosts["a"].host.reachable = False
    settle(platform)
    assert platform.vms.get("db").host in ("b", "c")


def test_a_fence_that_fails_restarts_nothing_and_says_what_to_do(
    platform: Platform, hosts: dict[str, FakeDriver], fenced_log: list[str]
) -> None:
    failing = PowerSwitch(hosts["a"], fenced_log, fails=True)
    platform.failover.agent_of = lambda host: failing if host.name == "a" else None
    make_vm(platform, "db", storage="nas", ha=True)
    hosts["a"].host.reachable = False
    settle(platform)
    host = platform.hosts.get("a")
    assert host.state is HostState.FAILED
    assert "fence failed: the power switch does not answer" in host.state_reason
    assert "confirm by hand that it is off" in host.state_reason
    assert fence_of(platform, "a").status.value == "failed"
    vm = platform.vms.get("db")
    assert vm.host == "a" and "its fence failed" in str(vm.unavailable)
    assert not [op for op in platform.engine.list() if op.kind == "vm.restart-elsewhere"]
    # The operator checked the machine: their word fences it, and the VM starts elsewhere.
    run(platform, platform.failover.fence("a", confirmed_by="admin"))
    assert platform.hosts.get("a").state is HostState.FENCED
    assert platform.vms.get("db").host in ("b", "c")
    assert "admin" in fence_of(platform, "a").result["fence"]


def test_two_hosts_failing_at_once_are_held_with_an_alert(
    platform: Platform, hosts: dict[str, FakeDriver], fenced_log: list[str]
) -> None:
    make_vm(platform, "db", storage="nas", ha=True)
    hosts["a"].host.reachable = False
    hosts["b"].host.reachable = False
    settle(platform)
    for name in ("a", "b"):
        host = platform.hosts.get(name)
        assert host.state is HostState.FAILED
        assert "held: 2 hosts are failing at once (a, b)" in host.state_reason
    assert fenced_log == [] and platform.failover.last_fence("a") is None
    assert platform.vms.get("db").host == "a"
    # The blip ends: both answer and are up, nothing was done.
    hosts["a"].host.reachable = hosts["b"].host.reachable = True
    settle(platform)
    assert {platform.hosts.get(n).state for n in ("a", "b")} == {HostState.UP}
    assert platform.vms.get("db").unavailable is None


def test_manual_fencing_waits_for_the_operator_and_refuses_a_host_that_answers(
    platform: Platform, hosts: dict[str, FakeDriver], fenced_log: list[str]
) -> None:
    platform.failover.agent_of = lambda host: None if host.fence_agent is FenceAgent.NONE else _manual(host)
    platform.hosts.update("a", HostChanges(fence_agent=FenceAgent.MANUAL))
    make_vm(platform, "db", storage="nas", ha=True)
    with pytest.raises(InvalidState, match="it answers its checks"):
        platform.failover.fence("a", confirmed_by="admin")
    hosts["a"].host.reachable = False
    hosts["a"].host.guests.clear()  # the operator pulled its plug
    settle(platform)
    host = platform.hosts.get("a")
    assert host.state is HostState.FAILED and "waiting for an operator" in host.state_reason
    with pytest.raises(InvalidState, match="manual fencing"):
        platform.failover.fence("a")
    assert platform.vms.get("db").host == "a"
    run(platform, platform.failover.fence("a", confirmed_by="admin"))
    assert platform.vms.get("db").host in ("b", "c")


def _manual(host: Host) -> Fencer | None:
    from flexvm.fencing.agents import fencer_for

    return fencer_for(host)


def test_a_guest_still_running_on_an_unfenced_host_cannot_be_started_twice(
    platform: Platform, hosts: dict[str, FakeDriver]
) -> None:
    """An operator confirms wrongly (the host is only cut off): the lock manager refuses the
    second copy, and the restart fails instead of running the VM twice."""
    platform.hosts.update("a", HostChanges(fence_agent=FenceAgent.MANUAL))
    platform.failover.agent_of = _manual
    vm = make_vm(platform, "db", storage="nas", ha=True)
    hosts["a"].host.reachable = False  # partitioned: its guest runs on
    settle(platform)
    run(platform, platform.failover.fence("a", confirmed_by="admin"))
    restart = next(op for op in platform.engine.list() if op.kind == "vm.restart-elsewhere")
    assert restart.status.value == "failed" and "lock" in str(restart.error)
    running = [d for d in hosts.values() if vm.domain_name in d.host.guests and d.host.guests[vm.domain_name].state
               is GuestState.RUNNING]  # fmt: skip
    assert running == [hosts["a"]]


def test_deleting_a_vm_of_a_fenced_host_leaves_its_guest_for_when_it_answers(
    platform: Platform, hosts: dict[str, FakeDriver], shared: str
) -> None:
    make_vm(platform, "local")
    make_vm(platform, "cold", storage="nas")
    hosts["a"].host.reachable = False
    settle(platform)
    run(platform, platform.vms.delete("local"))
    run(platform, platform.vms.delete("cold"))
    assert platform.vms.list() == []
    assert not [v for v in FakeDriver._stores[shared] if v.startswith("cold")]  # removed through b
    with platform.db.session() as session:
        left = sorted((x.kind, x.name) for x in LeftoverRepo(session).on_host("a"))
    assert ("domain", "local") in left and ("volume", "local-os.qcow2") in left and ("domain", "cold") in left


# --- what is refused -------------------------------------------------------------------------


def test_ha_needs_shared_storage_and_a_priority_in_range(platform: Platform, hosts: dict[str, FakeDriver]) -> None:
    with pytest.raises(InvalidInput, match="needs shared storage") as caught:
        platform.vms.create("db", "Standard_B1s", "img", ha=True)
    assert caught.value.field == "ha"
    with pytest.raises(InvalidInput, match="from 0 to 1000"):
        platform.vms.create("db", "Standard_B1s", "img", storage="nas", ha=True, ha_priority=5000)
    assert platform.vms.list() == []
    make_vm(platform, "local")
    with pytest.raises(InvalidInput, match="needs shared storage"):
        platform.vms.set_ha("local", True)
    make_vm(platform, "db", storage="nas")
    assert platform.vms.set_ha("db", True, 7).ha_priority == 7
    assert platform.vms.get("db").ha


@pytest.mark.parametrize(
    ("kind", "options", "says"),
    [
        (FenceAgent.IPMI, {"address": "10.0.0.9"}, "needs password_file, user"),
        (FenceAgent.LAB, {"root": "/x", "host": "lab1", "colour": "red"}, "does not take colour"),
        (FenceAgent.MANUAL, {"address": "x"}, "takes: none"),
        (FenceAgent.IPMI, {"address": "a", "user": "u", "password_file": "/nonexistent"}, "not a file"),
    ],
)
def test_fence_options_are_checked_naming_what_is_wrong(kind: FenceAgent, options: dict[str, str], says: str) -> None:
    with pytest.raises(InvalidInput, match=says) as caught:
        check_options(kind, options)
    assert caught.value.field == "fence_options"


def test_a_bad_agent_on_a_host_leaves_it_as_it_was(platform: Platform, hosts: dict[str, FakeDriver]) -> None:
    with pytest.raises(InvalidInput, match="needs"):
        platform.hosts.update("a", HostChanges(fence_agent=FenceAgent.IPMI))
    assert platform.hosts.get("a").fence_agent is FenceAgent.LAB


# --- the IPMI agent --------------------------------------------------------------------------


class Bmc:
    """What ipmitool would say, for the IPMI agent's own logic (the command it builds, how it
    reads the answers); a real controller is not on this machine."""

    def __init__(self, power: str = "on", answers: bool = True) -> None:
        self.power, self.answers, self.calls = power, answers, []  # type: ignore[var-annotated]

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        if not self.answers:
            return subprocess.CompletedProcess(argv, 1, "", "Error: Unable to establish IPMI v2 / RMCP+ session")
        if argv[-2:] == ["power", "off"]:
            self.power = "off"
            return subprocess.CompletedProcess(argv, 0, "Chassis Power Control: Down/Off\n", "")
        return subprocess.CompletedProcess(argv, 0, f"Chassis Power is {self.power}\n", "")


def test_the_ipmi_agent_powers_off_through_the_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = tmp_path / "bmc-password"
    password.write_text("secret\n")
    bmc = Bmc()
    monkeypatch.setattr(ipmi.subprocess, "run", bmc)
    agent = ipmi.IpmiFencer("h1", {"address": "bmc-h1", "user": "admin", "password_file": str(password)})
    assert agent.second_opinion() == Opinion(True, "its management controller answers (power on); the host does not")
    assert agent.power_off() == "asked its management controller to power it off"
    assert agent.confirm_off() == "its management controller reports power off"
    argv = bmc.calls[0]
    assert argv[0].endswith("/ipmitool") and argv[1:9] == ["-I", "lanplus", "-H", "bmc-h1", "-U", "admin", "-f",
                                                          str(password)]  # fmt: skip
    assert "secret" not in " ".join(argv)
    bmc.answers = False
    opinion = agent.second_opinion()
    assert not opinion.confirms and "Unable to establish" in opinion.seen
    with pytest.raises(FenceFailed, match="ipmitool chassis power status failed"):
        agent.power_off()


# --- scale sets ------------------------------------------------------------------------------


def test_a_scale_set_instance_on_a_failed_host_is_replaced_elsewhere(
    scaling: ScalingPlatform,  # noqa: F811
    small_disk: Path,
) -> None:
    """Its disk lives on the failed host only: it is not restarted but replaced, as an instance
    that vanished is, and the one left behind is removed when the host answers again."""
    p = scaling.platform
    quick_image(p, small_disk)
    run(p, p.scale_sets.create(ScaleSetSpec("web", "Standard_B1ls", "img", 2, lb_port="8080:80")), timeout=30)
    victim = p.vms.get("web-0")
    assert victim.host is not None
    p.hosts.update(victim.host, HostChanges(fence_agent=FenceAgent.MANUAL))
    p.failover.settings = dataclasses.replace(p.settings, fail_seconds=0.0)
    scaling.hosts[victim.host].host.reachable = False
    p.health.check_all()
    assert "only on host" in str(p.vms.get("web-0").unavailable)
    operation = p.scale_sets.heal("web")
    assert operation is not None
    run(p, operation, timeout=30)
    instances = [v.instance.vm_name for v in p.scale_sets.instances("web")]
    assert "web-0" not in instances and len(instances) == 2
    assert all(p.vms.get(n).host != victim.host for n in instances)
    with p.db.session() as session:
        assert ("domain", victim.domain_name) in {(x.kind, x.name) for x in LeftoverRepo(session).on_host(victim.host)}
