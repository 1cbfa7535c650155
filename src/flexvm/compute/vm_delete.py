"""Deleting a VM: its guest and disks removed from the host, then its record, addresses and claim.

Both steps are safe to repeat, so a delete interrupted anywhere is finished by whichever server
resumes it. A host that refuses leaves the VM recorded failed, saying the delete can be retried.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from flexvm.compute.hosts import HostService
from flexvm.compute.vm_records import VmRecords, change_in, remove_guest_and_files
from flexvm.errors import FlexvmError
from flexvm.model.operation import Operation
from flexvm.model.vm import ProvisioningState, Vm
from flexvm.operations.engine import Engine
from flexvm.operations.run import Run
from flexvm.store.db import Database
from flexvm.store.repositories import VmRepo

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
            vm.set_provisioning(ProvisioningState.DELETING)
            operation = self.engine.record(session, KIND, "vm", name, vm=vm, params={"vm_id": vm.id})
        return self.engine.launch(operation)

    def _work(self, run: Run) -> dict[str, Any]:
        vm = self.records.by_id(run.params["vm_id"])
        if vm is None:  # forgotten already: a resumed delete that had finished its last step
            return {}
        host = vm.host or vm.disk_host
        if host is not None:
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


def _failed(session: Session, vm: Vm, operation_id: str) -> None:
    def apply(v: Vm) -> None:
        v.set_provisioning(ProvisioningState.FAILED, operation_id)
        v.error = "delete failed; the guest or its disks may remain: retry the delete"

    change_in(session, vm.id, apply)
