"""Scale sets on the fake driver: instances named and spread, the load balancer told only about
instances whose probe passed, scale-in that drains before it deletes, failed instances replaced,
rolling model updates, healing after the server stopped mid-way, and the bad-input refusals."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from flexvm.errors import Action, Busy, CapacityError, Conflict, InvalidInput, NotFound, Remedy
from flexvm.model.scaleset import Instance, InstanceState
from flexvm.scaling.scalesets import ScaleSetSpec
from flexvm.store.db import utcnow
from flexvm.store.scaling import ScaleSetRepo
from tests.unit.flex_helpers import quick_image
from tests.unit.pool_helpers import run
from tests.unit.scaling_helpers import ScalingPlatform, scaling  # noqa: F401 (a fixture)

SIZE = "Standard_B1ls"


@pytest.fixture
def web(scaling: ScalingPlatform, small_disk: Path) -> ScalingPlatform:  # noqa: F811
    """Scale set 'web': 3 instances behind a load balancer on 127.0.0.1:8080 -> 80."""
    quick_image(scaling.platform, small_disk)
    spec = ScaleSetSpec("web", SIZE, "img", 3, lb_port="8080:80", fault_domains=3)
    run(scaling.platform, scaling.platform.scale_sets.create(spec), timeout=30)
    return scaling


def names(s: ScalingPlatform, name: str = "web") -> list[str]:
    return [v.instance.vm_name for v in s.platform.scale_sets.instances(name)]


def host_of(s: ScalingPlatform, vm: str) -> str | None:
    return s.platform.vms.get(vm).host


def test_instances_are_named_after_the_set_spread_over_fault_domains_and_served(web: ScalingPlatform) -> None:
    views = web.platform.scale_sets.instances("web")
    assert [v.instance.vm_name for v in views] == ["web-0", "web-1", "web-2"]
    assert {v.instance.state for v in views} == {InstanceState.SERVING}
    assert sorted(host_of(web, n) or "" for n in names(web)) == ["a", "b", "c"]  # one per fault domain
    assert web.haproxy.backends("web") == ["web-0", "web-1", "web-2"]
    frontend = web.haproxy.config[0]
    assert (frontend.bind_address, frontend.port, frontend.backend_port) == ("127.0.0.1", 8080, 80)
    addresses = {b.address for b in frontend.backends}
    assert addresses == {next(n.ip for n in web.platform.vms.get(v).nics) for v in names(web)}
    assert all(a.startswith("10.213.0.") for a in addresses)
    # Each instance was probed before it was handed to the load balancer.
    assert set(web.probe.seen) >= addresses


def test_scale_out_adds_the_next_names_and_scale_in_drains_before_deleting(web: ScalingPlatform) -> None:
    p = web.platform
    run(p, p.scale_sets.scale("web", 5), timeout=30)
    assert names(web) == ["web-0", "web-1", "web-2", "web-3", "web-4"]
    assert len(web.haproxy.backends("web")) == 5

    web.haproxy.log.clear()
    run(p, p.scale_sets.scale("web", 2), timeout=30)
    remaining = names(web)
    assert len(remaining) == 2
    removed = {"web-0", "web-1", "web-2", "web-3", "web-4"} - set(remaining)
    # Default policy: balance fault domains, then the newest. web-3 and web-4 doubled up on two
    # domains; with them gone (3 left over 3 domains), the newest of the rest goes.
    assert removed == {"web-2", "web-3", "web-4"}
    drained = [vm for what, vm in web.haproxy.log if what == "drain"]
    assert sorted(drained) == sorted(removed)
    # Drained first, then the load balancer reloaded without them — and only then deleted.
    first_apply_after = next(i for i, (what, _) in enumerate(web.haproxy.log) if what == "apply")
    assert all(web.haproxy.log.index(("drain", vm)) < first_apply_after for vm in removed)
    assert web.haproxy.backends("web") == sorted(remaining)
    for vm in removed:
        with pytest.raises(NotFound):
            p.vms.get(vm)


@pytest.mark.parametrize(("policy", "expected"), [("newest", ["web-0", "web-1"]), ("oldest", ["web-2", "web-3"])])
def test_scale_in_policies(scaling: ScalingPlatform, small_disk: Path, policy: str, expected: list[str]) -> None:  # noqa: F811
    p = scaling.platform
    quick_image(p, small_disk)
    run(p, p.scale_sets.create(ScaleSetSpec("web", SIZE, "img", 4, scale_in_policy=policy)), timeout=30)
    run(p, p.scale_sets.scale("web", 2), timeout=30)
    assert names(scaling) == expected


def test_an_instance_that_never_answers_its_probe_is_replaced(scaling: ScalingPlatform, small_disk: Path) -> None:  # noqa: F811
    p = scaling.platform
    quick_image(p, small_disk)
    # The first address the lan hands out (10.213.0.10) belongs to a guest that never serves.
    scaling.probe.failing.add("10.213.0.10")
    run(p, p.scale_sets.create(ScaleSetSpec("web", SIZE, "img", 2, lb_port="8080:80")), timeout=30)
    scale_set = p.scale_sets.get("web")
    assert scale_set.replaced == 1
    assert "web-0" in (scale_set.error or "") and "did not answer 200" in (scale_set.error or "")
    assert names(scaling) == ["web-1", "web-2"]
    assert scaling.haproxy.backends("web") == ["web-1", "web-2"]
    assert "10.213.0.10" not in {b.address for f in scaling.haproxy.config for b in f.backends}


def test_a_set_whose_instances_never_come_up_gives_up_and_says_why(scaling: ScalingPlatform, small_disk: Path) -> None:  # noqa: F811
    p = scaling.platform
    quick_image(p, small_disk)
    scaling.probe.failing.update(f"10.213.0.{n}" for n in range(10, 100))
    done = run(p, p.scale_sets.create(ScaleSetSpec("web", SIZE, "img", 1, lb_port="80")), status="failed", timeout=60)
    assert "no instance came up in 3 attempts" in done.message
    assert names(scaling) == []  # nothing half-made left behind
    assert p.vms.list() == []


def test_rolling_update_keeps_the_serving_count_and_moves_every_instance_to_the_new_model(web: ScalingPlatform) -> None:
    p = web.platform
    web.haproxy.applied.clear()
    run(p, p.scale_sets.update_model("web", size="Standard_B1s", max_unavailable=1), timeout=60)
    views = p.scale_sets.instances("web")
    assert len(views) == 3 and all(v.current_model for v in views)
    assert {p.vms.get(v.instance.vm_name).size for v in views} == {"Standard_B1s"}
    assert all(v.instance.model_version == 2 for v in views)
    # New instances joined before old ones left: never fewer than 3 backends, at most 3 + 1.
    counts = [len(f[0].backends) for f in web.haproxy.applied if f]
    assert min(counts) >= 3 and max(counts) <= 4, counts


def test_heal_replaces_an_instance_deleted_behind_the_sets_back(web: ScalingPlatform) -> None:
    p = web.platform
    run(p, p.vms.delete("web-1"))
    operation = p.scale_sets.heal("web")
    assert operation is not None
    run(p, operation, timeout=30)
    assert names(web) == ["web-0", "web-2", "web-3"]
    assert p.scale_sets.heal("web") is None  # nothing left to do


def test_heal_settles_what_a_stopped_server_left_mid_scale_out(web: ScalingPlatform) -> None:
    """A server that stopped after naming an instance but before creating its VM left a joining
    record and an operation id on the set; the next server's heal settles both, creating the VM
    under the name already given (nothing failed, so nothing is counted replaced)."""
    p = web.platform
    with p.db.session() as session:
        sets = ScaleSetRepo(session)
        scale_set = sets.get("web")
        scale_set.capacity = 4
        scale_set.active_operation_id = "gone-with-the-old-server"
        scale_set.next_index = 4
        sets.save(scale_set)
        sets.add_instance(Instance("web-3", "web", 3, 1, InstanceState.JOINING, utcnow()))
    operation = p.scale_sets.heal("web")
    assert operation is not None
    run(p, operation, timeout=30)
    assert names(web) == ["web-0", "web-1", "web-2", "web-3"]
    assert web.haproxy.backends("web") == ["web-0", "web-1", "web-2", "web-3"]
    healed = p.scale_sets.get("web")
    assert (healed.active_operation_id, healed.replaced, healed.error) == (None, 0, None)


def test_bad_input_is_refused_with_the_field_named(scaling: ScalingPlatform, small_disk: Path) -> None:  # noqa: F811
    p = scaling.platform
    quick_image(p, small_disk)
    cases = [
        (ScaleSetSpec("web", SIZE, "img", -1), "instances"),
        (ScaleSetSpec("web", SIZE, "img", 1001), "instances"),
        (ScaleSetSpec("web", SIZE, "nope", 1), "image"),
        (ScaleSetSpec("web", SIZE, "img", 1, lb_port="80:99999"), "lb_port"),
        (ScaleSetSpec("web", SIZE, "img", 1, lb_port="http"), "lb_port"),
        (ScaleSetSpec("web", SIZE, "img", 1, lb_port="80", lb_bind="localhost"), "lb_bind"),
        (ScaleSetSpec("web", SIZE, "img", 1, scale_in_policy="random"), "scale_in_policy"),
        (ScaleSetSpec("web", SIZE, "img", 1, fault_domains=0), "fault_domains"),
        (ScaleSetSpec("w" * 60, SIZE, "img", 1), "name"),
        (ScaleSetSpec("bad_name", SIZE, "img", 1), "name"),
    ]
    for spec, field in cases:
        with pytest.raises(InvalidInput) as caught:
            p.scale_sets.create(spec)
        assert caught.value.details.get("field") == field, (spec, caught.value.message)
    assert p.scale_sets.list() == []


def test_a_set_larger_than_the_pool_says_how_many_fit(scaling: ScalingPlatform, small_disk: Path) -> None:  # noqa: F811
    p = scaling.platform
    quick_image(p, small_disk)
    # Three hosts of 4 CPUs at the default 4x ratio: 48 one-vCPU instances by CPU; memory
    # (8 GiB each, 512 MiB per instance) allows fewer.
    with pytest.raises(CapacityError) as caught:
        p.scale_sets.create(ScaleSetSpec("web", SIZE, "img", 500))
    fits = caught.value.details["fits"]
    assert 0 < fits < 500 and f"can hold {fits} more" in caught.value.message
    assert p.scale_sets.list() == [] and p.availability_sets.list() == []


def test_a_load_balancer_needs_hosts_on_a_network(platform, image: str) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInput) as caught:
        platform.scale_sets.create(ScaleSetSpec("web", SIZE, image, 1, lb_port="8080:80"))
    assert "host network" in caught.value.message


def test_one_operation_at_a_time_and_the_front_port_is_the_sets_own(web: ScalingPlatform) -> None:
    p = web.platform
    web.probe.answering.clear()  # the scale-out stays running until the probe answers
    operation = p.scale_sets.scale("web", 4)
    try:
        with pytest.raises(Busy):
            p.scale_sets.scale("web", 5)
    finally:
        web.probe.answering.set()
    run(p, operation, timeout=30)
    with pytest.raises(InvalidInput) as caught:
        p.scale_sets.create(ScaleSetSpec("api", SIZE, "img", 1, lb_port="8080:80"))
    assert "already scale set 'web'" in caught.value.message


def test_delete_removes_instances_the_availability_set_and_stops_the_balancer(web: ScalingPlatform) -> None:
    p = web.platform
    run(p, p.scale_sets.delete("web"), timeout=30)
    assert p.scale_sets.list() == [] and p.vms.list() == [] and p.availability_sets.list() == []
    assert web.haproxy.is_running is False
    with pytest.raises(NotFound):
        p.scale_sets.get("web")


def test_a_killed_balancer_is_started_again_with_the_same_backends(web: ScalingPlatform) -> None:
    web.haproxy.is_running = False
    assert web.platform.balancer.keep_running() is True
    assert web.haproxy.restarts == 1 and web.haproxy.backends("web") == ["web-0", "web-1", "web-2"]
    saves = web.haproxy.state_saves
    assert web.platform.balancer.keep_running() is False
    assert web.haproxy.state_saves == saves + 1, "a running HAProxy's health is saved for its next restart"


def test_a_rolling_update_needs_room_for_its_first_batch(web: ScalingPlatform) -> None:
    p = web.platform
    with pytest.raises(CapacityError) as caught:  # no host has 32 GiB for even one new instance
        p.scale_sets.update_model("web", size="Standard_D8s_v5")
    assert "not 1" in caught.value.message
    scale_set = p.scale_sets.get("web")
    assert (scale_set.size, scale_set.model_version, scale_set.active_operation_id) == ("Standard_B1ls", 1, None)


def test_a_delete_interrupted_by_a_stopped_server_is_finished_by_healing(web: ScalingPlatform) -> None:
    p = web.platform
    with p.db.session() as session:  # what delete() records before its operation does any work
        sets = ScaleSetRepo(session)
        scale_set = sets.get("web")
        scale_set.deleting, scale_set.capacity = True, 0
        scale_set.active_operation_id = "gone-with-the-old-server"
        sets.save(scale_set)
    operation = p.scale_sets.heal("web")
    assert operation is not None and operation.kind == "scaleset.delete"  # not a regrowing converge
    run(p, operation, timeout=30)
    assert p.scale_sets.list() == [] and p.vms.list() == [] and web.haproxy.is_running is False


def test_a_delete_while_a_scale_runs_waits_for_it_and_then_removes_everything(web: ScalingPlatform) -> None:
    p = web.platform
    web.probe.answering.clear()  # the scale-out waits at its first probe until the test lets it go
    scaling_up = p.scale_sets.scale("web", 5)
    deleting = p.scale_sets.delete("web")
    try:
        with pytest.raises(InvalidInput, match="being deleted"):
            p.scale_sets.scale("web", 2)
    finally:
        web.probe.answering.set()
    run(p, deleting, timeout=60)
    run(p, scaling_up, timeout=60)
    assert p.scale_sets.list() == [] and p.vms.list() == [] and p.availability_sets.list() == []


def test_an_instance_the_balancer_never_knew_does_not_block_removal(web: ScalingPlatform) -> None:
    p = web.platform
    run(p, p.vms.delete("web-1"))  # gone behind the set's back: HAProxy drops it at the next sync
    p.balancer.sync()
    run(p, p.scale_sets.delete("web"), timeout=30)
    assert p.scale_sets.list() == [] and p.vms.list() == []


def test_front_ports_that_would_clash_are_refused(web: ScalingPlatform) -> None:
    p = web.platform
    api_port = p.settings.port
    for lb_port, bind, why in [
        ("8080:80", "0.0.0.0", "already scale set 'web'"),  # a wildcard overlaps web's 127.0.0.1:8080
        (f"{api_port}:80", "127.0.0.1", "flexvm API's own port"),
    ]:
        with pytest.raises(InvalidInput, match=why):
            p.scale_sets.create(ScaleSetSpec("api", SIZE, "img", 1, lb_port=lb_port, lb_bind=bind))
    with socket.socket() as taken:  # a port another program listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InvalidInput, match="in use by another program"):
            p.scale_sets.create(ScaleSetSpec("api", SIZE, "img", 1, lb_port=f"{port}:80"))


def test_a_set_of_an_operator_defined_size(scaling: ScalingPlatform, small_disk: Path) -> None:  # noqa: F811
    p = scaling.platform
    quick_image(p, small_disk)
    p.sizes.create("Custom_small", 1, 384, 4 << 30)
    run(p, p.scale_sets.create(ScaleSetSpec("web", "Custom_small", "img", 2)), timeout=30)
    run(p, p.scale_sets.scale("web", 3), timeout=30)
    assert {p.vms.get(n).size for n in names(scaling)} == {"Custom_small"}


def test_the_sets_own_availability_set_is_the_sets_alone(scaling: ScalingPlatform, small_disk: Path) -> None:  # noqa: F811
    p = scaling.platform
    quick_image(p, small_disk)
    run(p, p.scale_sets.create(ScaleSetSpec("web", SIZE, "img", 0)), timeout=30)
    with pytest.raises(Conflict, match="belongs to scale set 'web'"):
        p.availability_sets.delete("web")
    for intruder in ("other", "web-7"):  # named like an instance is not being one
        with pytest.raises(InvalidInput, match="holds only its instances") as caught:
            p.vms.create(intruder, SIZE, "img", availability_set="web")
        assert caught.value.field == "availability_set"
        assert caught.value.remedy == Remedy(action=Action.ADD_SCALE_SET_INSTANCE, subject={"scale_set": "web"})
    assert p.vms.list() == []
    run(p, p.scale_sets.scale("web", 1), timeout=30)
    assert names(scaling) == ["web-0"]


def test_a_rolling_updates_surge_is_held_to_the_projects_quota_and_nothing_is_lost(web: ScalingPlatform) -> None:
    """A VM quota the set already fills: the first new-model instance is refused naming the
    quota, and the three old ones keep serving; no fourth VM is left behind."""
    p = web.platform
    p.projects.set_quotas("default", {"vms": 3})
    done = run(p, p.scale_sets.update_model("web", size="Standard_B1s", max_unavailable=1), status="failed", timeout=60)
    assert done.error is not None and done.error["code"] == "QuotaExceeded"
    assert done.error["details"]["quota"] == "vms" and done.error["details"]["limit"] == 3
    views = p.scale_sets.instances("web")
    assert [v.instance.vm_name for v in views] == ["web-0", "web-1", "web-2"]
    assert {v.instance.state for v in views} == {InstanceState.SERVING} and not any(v.current_model for v in views)
    assert sorted(vm.name for vm in p.vms.list()) == ["web-0", "web-1", "web-2"]
    assert web.haproxy.backends("web") == ["web-0", "web-1", "web-2"]
    assert "quota 'vms' exceeded" in (p.scale_sets.get("web").error or "")
