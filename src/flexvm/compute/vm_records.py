"""A VM's record: reading it, changing it in one transaction, and forgetting it once it is gone.

Every VM operation (create, power, delete, disks, moves, resizes) changes records through here.
States change only through the VM's state machines (``Vm.set_power``, ``Vm.set_provisioning``),
which name both states and the operation when a change is not allowed.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable

from sqlalchemy.orm import Session

from flexvm.compute.consoles import ConsoleArchive
from flexvm.compute.networks import NetworkService
from flexvm.drivers.base import Driver
from flexvm.errors import Busy, InvalidState
from flexvm.model.guest import GuestState
from flexvm.model.vm import PowerState, ProvisioningState, Vm
from flexvm.operations.run import Run
from flexvm.store.db import Database
from flexvm.store.repositories import LeftoverRepo, VmRepo


class VmRecords:
    def __init__(self, db: Database, networks: NetworkService, consoles: ConsoleArchive) -> None:
        self.db = db
        self.networks = networks
        self.consoles = consoles

    def list(self) -> builtins.list[Vm]:
        with self.db.session() as session:
            return VmRepo(session).list()

    def get(self, name: str) -> Vm:
        with self.db.session() as session:
            return VmRepo(session).get(name)

    def by_id(self, vm_id: str) -> Vm | None:
        with self.db.session() as session:
            return VmRepo(session).by_id(vm_id)

    def change(self, vm_id: str, apply: Callable[[Vm], None]) -> Vm | None:
        """Apply a change to the VM's current record in one transaction (None if it is gone)."""
        with self.db.session() as session:
            return change_in(session, vm_id, apply)

    def set_power(self, vm_id: str, state: PowerState, operation: str | None = None) -> None:
        self.change(vm_id, lambda vm: vm.set_power(state, operation))

    def discard(self, vm: Vm) -> None:
        """Forget a VM whose guest and disks are gone: its row (and so its claim), its addresses
        and its archived console. Safe to repeat."""
        self.consoles.forget(vm.id)
        with self.db.session() as session:
            held = NetworkService.release(session, vm.id)
            VmRepo(session).delete(vm.id)
        for network, _ip, mac in held:
            self.networks.withdraw(network, mac)


def change_in(session: Session, vm_id: str, apply: Callable[[Vm], None]) -> Vm | None:
    repo = VmRepo(session)
    vm = repo.by_id(vm_id)
    if vm is None:
        return None
    apply(vm)
    repo.save(vm)
    return vm


def check_usable(vm: Vm) -> None:
    """Refuse a change to a VM another operation holds, that is being deleted, or that has nothing."""
    if vm.active_operation_id is not None:
        # Say "busy with X" before any state complaint: the state is X's doing.
        raise Busy("VM", vm.name, vm.active_operation_id)
    if vm.provisioning_state is ProvisioningState.DELETING:
        raise InvalidState(f"VM '{vm.name}' is being deleted", details={"vm": vm.name, "state": "deleting"})
    if vm.host is None and vm.disk_host is None:
        raise InvalidState(
            f"VM '{vm.name}' has no host or disk (its create failed); delete it and create it again",
            details={"vm": vm.name, "needs": "recreate"},
        )


def power_state_of(state: GuestState | None) -> PowerState:
    """The power state a host's view of a guest means."""
    if state is None or state in (GuestState.SHUTOFF, GuestState.CRASHED):
        return PowerState.STOPPED
    if state is GuestState.SHUTDOWN:
        return PowerState.STOPPING
    if state in (GuestState.RUNNING, GuestState.PAUSED):
        return PowerState.RUNNING
    return PowerState.UNKNOWN


def remove_guest_and_files(driver: Driver, vm: Vm) -> None:
    """Power off, undefine, and delete every volume the VM owns. Safe to repeat."""
    driver.destroy(vm.domain_name)
    driver.undefine(vm.domain_name)
    remove_volumes(driver, vm)


def remove_host_copy(driver: Driver, vm: Vm) -> None:
    """What one host holds of a VM that lives on elsewhere: its guest, and its volumes unless they
    are on shared storage (the VM's only disk, which the other host runs from). Safe to repeat."""
    driver.destroy(vm.domain_name)
    driver.undefine(vm.domain_name)
    if vm.storage is None:
        remove_volumes(driver, vm)


def remove_volumes(driver: Driver, vm: Vm) -> None:
    for disk in vm.disks:
        driver.delete_instance_volume(disk.name, store=vm.storage)
    driver.delete_instance_volume(vm.console_log, store=vm.storage)


def leave_behind(db: Database, host: str, vm: Vm, reason: str) -> None:
    """Record what a host that does not answer keeps of a VM (its guest, disks, console log), to
    be removed when it answers again: nothing is orphaned unseen."""
    with db.session() as session:
        leftovers = LeftoverRepo(session)
        leftovers.add(host, "domain", vm.domain_name, reason)
        for volume in [d.name for d in vm.disks] + [vm.console_log]:
            leftovers.add(host, "volume", volume, reason)


def power_step(run: Run, name: str, vm_id: str, state: PowerState, detail: str = "") -> None:
    """A step that records a VM's new power state (in the transaction that records the step)."""

    def record(session: Session) -> None:
        change_in(session, vm_id, lambda vm: vm.set_power(state, run.id))

    run.db_step(name, record, detail=detail or f"recording it {state.value}")
