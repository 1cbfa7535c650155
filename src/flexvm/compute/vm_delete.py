"""Deleting a VM: its guest and disks removed from the host, then its record, addresses and claim.

Both steps are safe to repeat, so a delete interrupted anywhere is finished by whichever server
resumes it. A host that refuses leaves the VM recorded failed, saying the delete can be retried.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from flexvm.compute.hosts import HostService
from flexvm.compute.vm_records import VmRecords, change_in, remove_guest_and_files, remove_volumes
from flexvm.errors import FlexvmError, InvalidState
from flexvm.model.host import HostState
from flexvm.model.operation import Operation
from flexvm.model.vm import ProvisioningState, Vm
from flexvm.operations.engine import Engine
from flexvm.operations.run import Run
from flexvm.store.db import Database
from flexvm.store.repositories import HostRepo, LeftoverRepo, VmRepo

KIND = "vm.delete"


class VmDeleter:
    def __init__(self, db: Database, engine: Engine, hosts: HostService, records: VmRecords) -> None:
        self.db = db
        self.engine = engine
        self.hosts = hosts
        self.records = records
        engine.register(KIND, self._work)

    def delete(self, name: str) -> Operation:
        with self.db.session() as session:
            vm = VmRepo(session).get(name)
            host = HostRepo(session).find(vm.host or vm.disk_host or "")
            if host is not None and host.state is HostState.SUSPECT:
                raise InvalidState(
                    f"VM '{name}' is on host {host.name}, which has missed its health checks: it can be "
                    "deleted once the host answers again or has been fenced",
                    details={"vm": name, "host": host.name, "host_state": host.state.value},
                )
            vm.set_provisioning(ProvisioningState.DELETING)
            operation = self.engine.record(session, KIND, "vm", name, vm=vm, params={"vm_id": vm.id})
        return self.engine.launch(operation)

    def _work(self, run: Run) -> dict[str, Any]:
        vm = self.records.by_id(run.params["vm_id"])
        if vm is None:  # forgotten already: a resumed delete that had finished its last step
            return {}
        host = vm.host or vm.disk_host
        if host is not None and self.hosts.get(host).state in (HostState.FAILED, HostState.FENCED):
            run.step("leave", lambda: self._leave_on_failed(vm, host), detail=f"host {host} has failed")
        elif host is not None:
            driver = self.hosts.driver(host)
            try:
                run.step(
                    "remove",
                    lambda: remove_guest_and_files(driver, vm),
                    detail=f"removing the guest and its disks from host {host}",
                )
            except FlexvmError:
                run.db_step("record-failure", lambda s: _failed(s, vm, run.id))
                raise
        run.step("forget", lambda: self.records.discard(vm), detail="its record, addresses and claim")
        return {}

    def _leave_on_failed(self, vm: Vm, host: str) -> str:
        """A failed host cannot be asked: what it keeps of the VM is removed when it answers again.
        Disks on shared storage are removed now, through a host that is up."""
        reason = f"VM {vm.name} deleted while host {host} had failed"
        with self.db.session() as session:
            leftovers = LeftoverRepo(session)
            leftovers.add(host, "domain", vm.domain_name, reason)
            if vm.storage is None:
                for volume in [d.name for d in vm.disks] + [vm.console_log]:
                    leftovers.add(host, "volume", volume, reason)
        if vm.storage is None:
            return "left for when it answers"
        up = next((h.name for h in self.hosts.list() if h.state is HostState.UP), None)
        if up is None:
            raise InvalidState(f"no host is up to remove {vm.name}'s disks from shared storage '{vm.storage.name}'")
        remove_volumes(self.hosts.driver(up), vm)
        return f"its disks removed through {up}"


def _failed(session: Session, vm: Vm, operation_id: str) -> None:
    def apply(v: Vm) -> None:
        v.set_provisioning(ProvisioningState.FAILED, operation_id)
        v.error = "delete failed; the guest or its disks may remain: retry the delete"

    change_in(session, vm.id, apply)
