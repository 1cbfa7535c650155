"""The operations of the crash matrix, each with what it needs set up first.

A scenario's ``setup`` runs on a server of its own that then stops cleanly, so no crash point
can fire in it; ``act`` starts the one operation the matrix kills a server in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexvm.model.operation import Operation
from flexvm.platform import Platform
from flexvm.scaling.scalesets import ScaleSetSpec
from tests.conftest import close_platform
from tests.unit.matrix_helpers import World, furnish
from tests.unit.pool_helpers import run

SIZE = "Standard_B1ls"


@dataclass(frozen=True)
class Scenario:
    name: str
    setup: Callable[[World, Platform, Path], None]
    act: Callable[[Platform], Operation]
    host_mib: dict[str, int] = field(default_factory=dict)
    ends: str = "succeeded"  # how the operation ends without a kill


def vm(platform: Platform, name: str, size: str = "Standard_B1s", host: str = "a", **options: Any) -> None:
    run(platform, platform.vms.create(name, size, "img", host=host, network="lan", **options))


def nothing(_world: World, _platform: Platform, _disk: Path) -> None:
    pass


def one_vm(**options: Any) -> Callable[[World, Platform, Path], None]:
    def setup(_world: World, platform: Platform, _disk: Path) -> None:
        vm(platform, "web1", **options)

    return setup


def start_fails(world: World, _platform: Platform, _disk: Path) -> None:
    """Host a refuses to start guests from now on: a create there fails for good at its start,
    and undoes what it did."""
    world.hosts["a"].fail_next("start", times=1000)


def deallocated(_world: World, platform: Platform, _disk: Path) -> None:
    vm(platform, "web1")
    run(platform, platform.vms.deallocate("web1"))


def crowded(_world: World, platform: Platform, _disk: Path) -> None:
    """a has 3.5 GiB for guests: 'filler' takes 2, web1 1; too little left to grow web1 to 2."""
    vm(platform, "filler", "Standard_B1ms")
    vm(platform, "web1")


def two_on_a(_world: World, platform: Platform, _disk: Path) -> None:
    vm(platform, "web1")
    vm(platform, "web2")


def scale_set(instances: int) -> Callable[[World, Platform, Path], None]:
    def setup(_world: World, platform: Platform, _disk: Path) -> None:
        spec = ScaleSetSpec("web", SIZE, "img", instances, lb_port="8080:80", fault_domains=3)
        run(platform, platform.scale_sets.create(spec), timeout=30)

    return setup


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("create", nothing, lambda p: p.vms.create("web1", "Standard_B1s", "img", host="a", network="lan")),
        Scenario(
            "create-that-fails",
            start_fails,
            lambda p: p.vms.create("web1", "Standard_B1s", "img", host="a", network="lan"),
            ends="failed",
        ),
        Scenario("delete", one_vm(), lambda p: p.vms.delete("web1")),
        Scenario("start-deallocated", deallocated, lambda p: p.vms.start("web1")),
        Scenario("resize-hot", one_vm(), lambda p: p.resizer.resize("web1", "Standard_B2s")),
        Scenario(
            "resize-move-then-hot",
            crowded,
            lambda p: p.resizer.resize("web1", "Standard_B1ms"),
            host_mib={"a": 4096},
        ),
        Scenario(
            "resize-restart",
            one_vm(max_size="Standard_B1ms"),
            lambda p: p.resizer.resize("web1", "Standard_B2s", allow_restart=True),
        ),
        Scenario("migrate-live", one_vm(), lambda p: p.mover.migrate("web1", "b")),
        Scenario("migrate-cold", one_vm(), lambda p: p.mover.migrate("web1", "b", cold=True)),
        Scenario("drain", two_on_a, lambda p: p.drains.drain("a")),
        Scenario("scale-out", scale_set(1), lambda p: p.scale_sets.scale("web", 2)),
        Scenario("scale-in", scale_set(2), lambda p: p.scale_sets.scale("web", 1)),
        Scenario("rolling-update", scale_set(2), lambda p: p.scale_sets.update_model("web", size="Standard_B1s")),
    )
}


def prepare(world: World, scenario: Scenario, small_disk: Path) -> None:
    """Furnish the world and set the scenario up on a server that then stops cleanly."""
    server = world.open()
    furnish(world, server, small_disk, scenario.host_mib)
    scenario.setup(world, server, small_disk)
    close_platform(server)
