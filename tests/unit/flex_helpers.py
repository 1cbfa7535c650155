"""Helpers of the flexibility tests (resize, moves, drains): VMs pinned to fake hosts, what a host
holds (claims, guests, volumes), and a gate that holds a driver call until the test lets it go."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from flexvm.capacity.fit import Allocation
from flexvm.drivers.fake import FakeDriver, FakeGuest
from flexvm.model.operation import Operation
from flexvm.model.vm import Vm
from flexvm.platform import Platform
from tests.unit.pool_helpers import run
from tests.unit.waiting import wait_done

GATE_SECONDS = 10.0


def quick_image(platform: Platform, disk: Path) -> str:
    """tests.conftest's 'img', waited for at the fake's pace (runner.wait polls every 0.1 s)."""
    run(platform, platform.images.import_image("img", disk, ready_marker="flexvm: ready"))
    return "img"


def make_vm(platform: Platform, name: str, size: str = "Standard_B1s", host: str = "a", **kwargs: Any) -> Vm:
    """A running VM of ``size`` on ``host`` (image 'img'), its create waited for."""
    run(platform, platform.vms.create(name, size, "img", host=host, **kwargs))
    return platform.vms.get(name)


def claims(platform: Platform, host: str) -> Allocation:
    return platform.hosts.detail(host).allocated


def guest(driver: FakeDriver, name: str) -> FakeGuest | None:
    return driver.host.guests.get(name)


def volumes_of(driver: FakeDriver, vm: str) -> list[str]:
    """The instance volumes a host keeps for a VM: its disks and its console log."""
    return sorted(v for v in driver.host.instances if v.startswith(f"{vm}-") or v == f"{vm}.console.log")


def leftovers(platform: Platform, host: str) -> list[str]:
    return sorted(platform.hosts.detail(host).leftovers)


def failed(platform: Platform, operation: Operation, code: str | None = None) -> Operation:
    done = run(platform, operation, status="failed")
    assert done.error is not None
    if code is not None:
        assert done.error["code"] == code, done.error
    return done


class Gate:
    """Holds every call of ``method`` on ``driver`` until ``open()``: a test looks at the records
    while an operation is mid-way, deterministically."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, driver: FakeDriver, method: str) -> None:
        self.reached = threading.Event()
        self._open = threading.Event()
        original = getattr(driver, method)

        def held(*args: Any, **kwargs: Any) -> Any:
            self.reached.set()
            if not self._open.wait(GATE_SECONDS):
                raise AssertionError(f"the gate on {method} was never opened")
            return original(*args, **kwargs)

        monkeypatch.setattr(driver, method, held)

    def wait_reached(self) -> None:
        assert self.reached.wait(GATE_SECONDS), "the operation never reached the gate"

    def open(self) -> None:
        self._open.set()


def finish(platform: Platform, gate: Gate, operation: Operation) -> Operation:
    """Open the gate and wait for the operation, whatever its outcome (for finally blocks)."""
    gate.open()
    return wait_done(platform, operation.id)
