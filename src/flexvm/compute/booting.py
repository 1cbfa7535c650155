"""Guest power as workflow steps, shared by every operation that starts or stops a guest
(create, start, restart, stop, deallocate, cold moves, resizes that restart).

Each step checks, then acts, so that one re-run after a crash goes on from where the guest is:
a start finds the guest running and does not start it twice; waiting for readiness reads the
console from where it was before the start, and finds a readiness line printed while no server
was watching.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from flexvm.compute import guest_boot
from flexvm.compute.vm_records import VmRecords, change_in
from flexvm.config import Settings
from flexvm.drivers.base import Driver
from flexvm.errors import FlexvmError, OperationTimeout
from flexvm.images.cloudinit import build_nocloud_seed
from flexvm.model.guest import GuestState
from flexvm.model.image import Image
from flexvm.model.vm import PowerState, ProvisioningState, Vm
from flexvm.operations.run import Run
from flexvm.store.db import utcnow

POLL_SECONDS = 0.25


def runs(driver: Driver, vm: Vm) -> bool:
    info = driver.guest_info(vm.domain_name)
    return info is not None and info.state is GuestState.RUNNING


class Booter:
    def __init__(self, records: VmRecords, settings: Settings) -> None:
        self.records = records
        self.settings = settings

    # --- starting ------------------------------------------------------------------------
    def start(self, run: Run, driver: Driver, vm: Vm, *, detail: str = "powering on") -> dict[str, Any]:
        """Start the guest unless it runs already; returns where its console stood before."""

        def start() -> dict[str, Any]:
            if runs(driver, vm):  # a re-run after a crash: it was started
                return {"started_at": time.time(), "again": True}
            driver.start(vm.domain_name)
            return {"started_at": time.time()}

        return run.step("start", start, undo=lambda _out: driver.destroy(vm.domain_name), detail=detail)

    def console_mark(self, run: Run, driver: Driver, vm: Vm) -> int:
        """Where the console stands before a start: the readiness line is looked for after it."""
        return int(run.step("console", lambda: guest_boot.console_length(driver, vm)))

    def boot(
        self, run: Run, driver: Driver, vm: Vm, image: Image, *, creating: bool, console_offset: int | None = None
    ) -> dict[str, Any]:
        """Start the guest and wait until it says it is ready; record it running."""
        offset = self.console_mark(run, driver, vm) if console_offset is None else console_offset
        started = self.start(run, driver, vm)
        return self.wait_ready(
            run, driver, vm, image, creating=creating, offset=offset, started_at=started["started_at"]
        )

    def wait_ready(
        self, run: Run, driver: Driver, vm: Vm, image: Image, *, creating: bool, offset: int, started_at: float
    ) -> dict[str, Any]:
        def wait() -> dict[str, Any]:
            ready = guest_boot.wait_until_ready(
                driver,
                vm,
                image.ready_marker,
                console_offset=offset,
                started=started_at,
                timeout=self.settings.ready_timeout,
                clock=time.time,
            )
            return {"seconds": round(ready.seconds, 3), "facts": ready.facts}

        run.pivot("booted", "the guest runs: from here a failure keeps it, for its console")
        try:
            ready = run.step("wait-ready", wait, detail="waiting for the guest's readiness line")
        except FlexvmError as err:
            # Keep the guest: the user will want its console to see why it hung.
            power = PowerState.RUNNING if isinstance(err, OperationTimeout) else PowerState.STOPPED
            self._record_failed_boot(run, vm, power, err.message.splitlines()[0], creating)
            raise
        ip = ready["facts"].get("ip")

        def record(session: Session) -> None:
            def apply(v: Vm) -> None:
                v.set_provisioning(ProvisioningState.SUCCEEDED, run.id)
                v.set_power(PowerState.RUNNING, run.id)
                v.ready_at, v.boot_seconds, v.error = utcnow(), ready["seconds"], None
                for nic in v.nics[:1]:
                    # A reserved address is the record; what the guest reports fills in only where
                    # flexvm reserves none (QEMU's user network).
                    if nic.network == "user":
                        nic.ip = ip if ip and ip != "none" else None

            change_in(session, vm.id, apply)

        run.db_step("running", record, detail="recording the guest running")
        result: dict[str, Any] = {"boot_seconds": ready["seconds"], "guest": ready["facts"]}
        reserved = [nic.ip for nic in vm.nics if nic.network != "user" and nic.ip]
        if reserved and ip and ip not in reserved:
            # The network's DHCP did not hand out the reservation: say so rather than hide it.
            result["warnings"] = [f"the guest reports address {ip}, but {reserved[0]} is reserved for it"]
        return result

    def _record_failed_boot(self, run: Run, vm: Vm, power: PowerState, error: str, creating: bool) -> None:
        def record(session: Session) -> None:
            def apply(v: Vm) -> None:
                if creating:
                    v.set_provisioning(ProvisioningState.FAILED, run.id)
                v.set_power(power, run.id)
                v.error = error

            change_in(session, vm.id, apply)

        run.db_step("record-failure", record, detail=error)

    # --- stopping ------------------------------------------------------------------------
    def power_off(self, run: Run, driver: Driver, vm: Vm, *, force: bool) -> bool:
        """Graceful ACPI shutdown within the stop timeout, then the power is pulled. True if forced."""
        timeout = self.settings.stop_timeout

        def shutdown() -> bool:
            if _is_off(driver, vm):
                return True
            driver.shutdown(vm.domain_name)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if _is_off(driver, vm):
                    return True
                time.sleep(POLL_SECONDS)
            return False

        detail = f"asking the guest to power off (up to {timeout:.0f} s)"
        if not force and run.step("shutdown", shutdown, detail=detail):
            return False

        def pull() -> bool:
            if _is_off(driver, vm):
                return False
            driver.destroy(vm.domain_name)
            return True

        return bool(run.step("power-off", pull, detail="pulling the power"))


def _is_off(driver: Driver, vm: Vm) -> bool:
    info = driver.guest_info(vm.domain_name)
    return info is None or info.state is GuestState.SHUTOFF


def upload_seed(driver: Driver, vm: Vm, ssh_keys: tuple[str, ...]) -> None:
    """The VM's cloud-init NoCloud seed, built here and put in the host's instance pool."""
    seed = next(d for d in vm.disks if d.role == "seed")
    with tempfile.TemporaryDirectory(prefix="flexvm-seed-") as tmp:
        path = Path(tmp) / seed.name
        build_nocloud_seed(path, instance_id=vm.id, hostname=vm.name, user_data=vm.user_data, ssh_keys=list(ssh_keys))
        driver.upload_instance_volume(seed.name, path, store=vm.storage)
