"""Power: start (also from deallocated, claiming room again), stop, restart, deallocate.

Each request checks and records in one transaction (the transitional state is set there, so a
second request sees the VM busy), then a workflow does it step by step. A start that fails before
the guest runs leaves the VM as it was (a deallocated VM's new claim released); a stop, restart
or deallocate that fails records what the host really shows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from flexvm.access.quotas import admit_vm
from flexvm.capacity.fit import Allocation, room_on, why_not
from flexvm.compute import guest_boot
from flexvm.compute.booting import Booter
from flexvm.compute.hosts import HostService
from flexvm.compute.images import ImageService
from flexvm.compute.vm_records import VmRecords, change_in, check_usable, power_state_of, power_step
from flexvm.drivers.base import Driver
from flexvm.errors import CapacityError, FlexvmError, NotFound
from flexvm.model.access import Quotas
from flexvm.model.operation import Operation
from flexvm.model.vm import PowerState, Vm, check_action
from flexvm.operations.engine import Engine
from flexvm.operations.run import Run
from flexvm.store.db import Database
from flexvm.store.repositories import HostRepo, VmRepo


class VmPower:
    def __init__(
        self, db: Database, engine: Engine, hosts: HostService, images: ImageService, records: VmRecords, booter: Booter
    ) -> None:
        self.db = db
        self.engine = engine
        self.hosts = hosts
        self.images = images
        self.records = records
        self.booter = booter
        engine.register("vm.start", self._start)
        engine.register("vm.stop", self._stop)
        engine.register("vm.restart", self._restart)
        engine.register("vm.deallocate", self._deallocate)

    # --- requests ------------------------------------------------------------------------
    def start(self, name: str) -> Operation:
        with self.db.session() as session:
            vms = VmRepo(session)
            vm = vms.get(name)
            check_usable(vm)
            check_action(vm.name, "start", vm.power_state)
            was = vm.power_state
            if was is PowerState.DEALLOCATED:
                vm.host = self._claim_again(session, vm)
            vm.set_power(PowerState.STARTING)
            operation = self.engine.record(
                session, "vm.start", "vm", name, vm=vm, params={"vm_id": vm.id, "was": was.value}
            )
        return self.engine.launch(operation)

    @staticmethod
    def _claim_again(session: Session, vm: Vm) -> str:
        """Claim CPU and memory again where a deallocated VM's disk lives, in this transaction."""
        assert vm.disk_host is not None
        admit_vm(session, vm.name, Quotas(vcpus=vm.vcpus, memory_mib=vm.memory_mib))
        host = HostRepo(session).lock(vm.disk_host)
        vcpus, memory, disk = VmRepo(session).allocated_on(host.name)
        reason = why_not(room_on(host, Allocation(vcpus, memory, disk)), vm.vcpus, vm.memory_mib, 0)
        if reason:
            raise CapacityError(
                f"cannot start '{vm.name}' on host {host.name}: {reason}", details={"hosts": {host.name: reason}}
            )
        return host.name

    def stop(self, name: str, *, force: bool = False) -> Operation:
        return self._request(name, "stop", PowerState.STOPPING, force=force)

    def restart(self, name: str) -> Operation:
        return self._request(name, "restart", PowerState.STOPPING)

    def deallocate(self, name: str) -> Operation:
        return self._request(name, "deallocate", PowerState.DEALLOCATING)

    def _request(self, name: str, action: str, transitional: PowerState, **params: Any) -> Operation:
        with self.db.session() as session:
            vm = VmRepo(session).get(name)
            check_usable(vm)
            check_action(vm.name, action, vm.power_state)
            vm.set_power(transitional)
            operation = self.engine.record(
                session, f"vm.{action}", "vm", name, vm=vm, params={"vm_id": vm.id, **params}
            )
        return self.engine.launch(operation)

    # --- workflows -----------------------------------------------------------------------
    def _vm(self, run: Run) -> Vm:
        vm = self.records.by_id(run.params["vm_id"])
        if vm is None:
            raise NotFound("VM", run.operation.target_name)
        return vm

    def _start(self, run: Run) -> dict[str, Any]:
        vm = self._vm(run)
        was = PowerState(run.params["was"])
        assert vm.host is not None
        driver = self.hosts.driver(vm.host)
        run.step(
            "claim",
            lambda: {"host": vm.host, "was": was.value},
            undo=lambda _out: self._back_to(run, driver, vm, was),
            detail="the VM's room on its host" + (" (claimed again)" if was is PowerState.DEALLOCATED else ""),
        )
        seen = run.step("inspect", lambda: _inspect(driver, vm), detail="what the host has of the guest")
        if seen["redefine"]:
            # Memory was hot-plugged (or ballooned) while it ran: start it at its size, DIMMs folded away.
            run.step("redefine", lambda: driver.undefine(vm.domain_name), detail=f"at its size, {vm.size}")
        if was is PowerState.DEALLOCATED or not seen["defined"] or seen["redefine"]:
            # Deallocated (or undefined behind flexvm's back): the disk is there, define anew.
            image = self.images.get(vm.image)
            host = self.hosts.get(vm.host)
            run.step(
                "image", lambda: self.images.ensure_on_host(driver, image), detail=f"image '{image.name}' on {vm.host}"
            )

            def define() -> None:
                if driver.guest_info(vm.domain_name) is None:
                    isolated = self.hosts.isolation.isolates(host)
                    driver.define(guest_boot.guest_spec(vm, image, host.accelerator, host.bridge, isolated=isolated))

            run.step("define", define, detail="defining the guest again")
        image = self.images.get(vm.image)
        self.hosts.isolation.spread(vm, required=vm.host)  # the project may have grown meanwhile
        return self.booter.boot(run, driver, vm, image, creating=False)

    def _back_to(self, run: Run, driver: Driver, vm: Vm, was: PowerState) -> None:
        """A start that failed before the guest ran: the VM as it was, a new claim released."""
        if was is PowerState.DEALLOCATED:
            driver.undefine(vm.domain_name)

        def apply(v: Vm) -> None:
            v.set_power(was, run.id)
            if was is PowerState.DEALLOCATED:
                v.host = None

        self.records.change(vm.id, apply)

    def _stop(self, run: Run) -> dict[str, Any]:
        vm = self._vm(run)
        assert vm.host is not None
        driver = self.hosts.driver(vm.host)
        forced = self._off(run, driver, vm, force=bool(run.params.get("force")))
        power_step(run, "stopped", vm.id, PowerState.STOPPED)
        return {"forced": forced}

    def _restart(self, run: Run) -> dict[str, Any]:
        vm = self._vm(run)
        assert vm.host is not None
        driver = self.hosts.driver(vm.host)
        forced = self._off(run, driver, vm, force=False)
        power_step(run, "starting", vm.id, PowerState.STARTING)
        image = self.images.get(vm.image)
        try:
            result = self.booter.boot(run, driver, vm, image, creating=False)
        except FlexvmError:
            if not _booted(run):
                self.resync(run, driver, vm)
            raise
        return {"forced": forced, **result}

    def _deallocate(self, run: Run) -> dict[str, Any]:
        vm = self._vm(run)
        assert vm.host is not None
        driver = self.hosts.driver(vm.host)
        forced = self._off(run, driver, vm, force=False)
        try:
            run.step(
                "undefine", lambda: driver.undefine(vm.domain_name), detail=f"releasing host {vm.host}'s CPU and memory"
            )
        except FlexvmError:
            self.resync(run, driver, vm)
            raise

        def deallocated(session: Session) -> None:
            def apply(v: Vm) -> None:
                v.set_power(PowerState.DEALLOCATED, run.id)
                v.host = None  # the claim on the host's CPU and memory goes with this record

            change_in(session, vm.id, apply)

        run.db_step("deallocated", deallocated)
        return {"forced": forced, "disk_kept_on": vm.disk_host}

    def _off(self, run: Run, driver: Driver, vm: Vm, *, force: bool) -> bool:
        try:
            return self.booter.power_off(run, driver, vm, force=force)
        except FlexvmError:
            self.resync(run, driver, vm)
            raise

    def resync(self, run: Run, driver: Driver, vm: Vm) -> None:
        """After a failed power change, record what the host really shows."""

        def look() -> str:
            try:
                info = driver.guest_info(vm.domain_name)
            except FlexvmError:
                return PowerState.UNKNOWN.value
            return power_state_of(info.state if info else None).value

        observed = PowerState(run.step("look", look, detail="reading the guest's state from its host"))
        power_step(run, "record-state", vm.id, observed)


def _inspect(driver: Driver, vm: Vm) -> dict[str, bool]:
    info = driver.guest_info(vm.domain_name)
    plugged = info.plugged_memory_kib if info is not None else 0
    return {
        "defined": info is not None,
        "redefine": bool(info is not None and plugged and plugged != vm.memory_mib * 1024),
    }


def _booted(run: Run) -> bool:
    return any(step.name == "booted" for step in run.operation.steps)
