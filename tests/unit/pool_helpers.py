"""Helpers of the many-hosts tests: hand-made host snapshots, fake hosts added to a platform, and
platform settings with no 'local' host (so a test's pool is exactly the hosts it adds)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flexvm.capacity.fit import Allocation, Room, room_on
from flexvm.compute.hosts import HostChanges, HostRequest
from flexvm.config import Settings
from flexvm.drivers.fake import FakeDriver
from flexvm.model.host import Accelerator, Host, HostState
from flexvm.model.operation import Operation
from flexvm.model.units import GIB
from flexvm.platform import Platform
from flexvm.scheduler.placement import HostSnapshot
from tests.helpers import wait_for as shared_wait_for
from tests.unit.waiting import wait_done

# --- pure: hosts and snapshots made by hand -----------------------------------------------------


def make_host(name: str = "h1", **changes: Any) -> Host:
    """4 CPUs, 8 GiB, 100 GiB, TCG, up: under the default ratios 16 vCPUs, 7.5 GiB, 100 GiB."""
    host = Host(
        name=name,
        uri=f"fake://{name}",
        state=HostState.UP,
        cpus=4,
        memory_mib=8192,
        disk_capacity_bytes=100 * GIB,
        accelerator=Accelerator.TCG,
        accelerator_reason="test",
        libvirt_version="0",
        hypervisor_version="0",
    )
    return dataclasses.replace(host, **changes)


NOTHING = Allocation()


def snap(host: Host, allocated: Allocation = NOTHING) -> HostSnapshot:
    return HostSnapshot(host, room_on(host, allocated))


# --- a platform's pool of fake hosts -----------------------------------------------------------


def pool_settings(tmp_path: Path, db_url: str, **changes: Any) -> Settings:
    """No local host, no periodic health check during a test, short timeouts."""
    settings = Settings(
        home=tmp_path / "home",
        db_url=db_url,
        local_uri="",
        ready_timeout=5.0,
        stop_timeout=1.0,
        health_seconds=3600.0,
        health_timeout=0.5,
    )
    return dataclasses.replace(settings, **changes)


def fake_uri(cpus: int = 4, memory_mib: int = 8192, disk_gib: int = 100) -> str:
    """A fresh in-memory host (fake hosts are shared per name in-process, so the name is unique)."""
    return f"fake://fh-{uuid.uuid4().hex[:10]}?cpus={cpus}&memory_mib={memory_mib}&disk_gib={disk_gib}"


def run(platform: Platform, operation: Operation, status: str = "succeeded", timeout: float = 15.0) -> Operation:
    done = wait_done(platform, operation.id, timeout)
    assert done.status.value == status, (done.status, done.error)
    return done


def add_host(
    platform: Platform, name: str, *, cpus: int = 4, memory_mib: int = 8192, disk_gib: int = 100, **settings: Any
) -> FakeDriver:
    """Add a fresh fake host through the service (an operation) and return the platform's driver for it."""
    uri = fake_uri(cpus, memory_mib, disk_gib)
    run(platform, platform.hosts.add(HostRequest(name, uri, HostChanges(**settings))))
    driver = platform.drivers.for_uri(uri)
    assert isinstance(driver, FakeDriver)
    return driver


def room_of(platform: Platform, host: str) -> Room:
    detail = platform.hosts.detail(host)
    return room_on(detail.host, detail.allocated)


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """tests.helpers.wait_for with the fake driver's pace: no need to poll slower than 10 ms."""
    return shared_wait_for(condition, timeout, what, interval=0.01)
