"""Growing a VM's OS disk: claimed on its host with the request, grown online while it runs.

The claim (the new size, counted in the host's allocated disk) is made in the request's
transaction; the workflow's first step stands for it, and undoing it gives the room back.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from flexvm.access.quotas import admit_vm
from flexvm.capacity.fit import Allocation, room_on, why_not
from flexvm.compute.hosts import HostService
from flexvm.compute.vm_records import VmRecords, change_in, check_usable
from flexvm.errors import CapacityError, InvalidInput, NotFound
from flexvm.model.access import Quotas
from flexvm.model.guest import GuestState
from flexvm.model.operation import Operation
from flexvm.model.units import format_bytes
from flexvm.model.vm import Vm, check_action
from flexvm.operations.engine import Engine
from flexvm.operations.run import Run
from flexvm.store.db import Database
from flexvm.store.repositories import HostRepo, VmRepo

KIND = "vm.resize-disk"


class VmDisks:
    def __init__(self, db: Database, engine: Engine, hosts: HostService, records: VmRecords) -> None:
        self.db = db
        self.engine = engine
        self.hosts = hosts
        self.records = records
        engine.register(KIND, self._work)

    def resize(self, name: str, size_bytes: int) -> Operation:
        with self.db.session() as session:
            vms = VmRepo(session)
            vm = vms.get(name)
            check_usable(vm)
            check_action(vm.name, "resize-disk", vm.power_state)
            if size_bytes == vm.disk_bytes:
                raise InvalidInput("size", f"the OS disk of '{name}' is already {format_bytes(size_bytes)}")
            if size_bytes < vm.disk_bytes:
                raise InvalidInput(
                    "size",
                    f"disks only grow: '{name}' has {format_bytes(vm.disk_bytes)}, "
                    f"and shrinking would destroy the data past {format_bytes(size_bytes)}",
                )
            assert vm.disk_host is not None
            admit_vm(session, name, Quotas(disk_bytes=size_bytes - vm.disk_bytes))
            host = HostRepo(session).lock(vm.disk_host)
            room = room_on(host, Allocation(*vms.allocated_on(host.name)))
            # A disk on shared storage takes none of the host's disk (the storage's own space is
            # the filesystem's to refuse).
            reason = None if vm.storage is not None else why_not(room, 0, 0, size_bytes - vm.disk_bytes)
            if reason:
                raise CapacityError(
                    f"cannot grow the disk of '{name}' on host {host.name}: {reason}",
                    details={"hosts": {host.name: reason}},
                )
            # Claim the new size now (the sum of disk_bytes is what is allocated on the host).
            old_bytes = vm.disk_bytes
            vm.disk_bytes = size_bytes
            operation = self.engine.record(
                session, KIND, "vm", name, vm=vm, params={"vm_id": vm.id, "from": old_bytes, "to": size_bytes}
            )
        return self.engine.launch(operation)

    def _work(self, run: Run) -> dict[str, Any]:
        vm = self.records.by_id(run.params["vm_id"])
        if vm is None:
            raise NotFound("VM", run.operation.target_name)
        old_bytes, size_bytes = int(run.params["from"]), int(run.params["to"])
        assert vm.disk_host is not None
        driver = self.hosts.driver(vm.disk_host)

        def give_back(_out: Any) -> None:
            self.records.change(vm.id, lambda v: setattr(v, "disk_bytes", old_bytes))

        run.step("claim", lambda: {"to": size_bytes}, undo=give_back, detail=f"{format_bytes(size_bytes)} claimed")
        online = bool(
            run.step("inspect", lambda: _running(driver, vm), detail="whether the guest runs (to grow it online)")
        )

        def grow() -> None:
            driver.resize_instance_volume(
                vm.os_disk.name, size_bytes, guest=vm.domain_name if online else None, store=vm.storage
            )

        detail = f"{format_bytes(old_bytes)} -> {format_bytes(size_bytes)}" + (" online" if online else "")
        run.step("grow", grow, detail=detail)

        def record(session: Session) -> None:
            def apply(v: Vm) -> None:
                v.disk_bytes = size_bytes
                for disk in v.disks:
                    if disk.role == "os":
                        disk.size_bytes = size_bytes

            change_in(session, vm.id, apply)

        run.db_step("recorded", record)
        return {"online": online, "size_bytes": size_bytes}


def _running(driver: Any, vm: Vm) -> bool:
    if vm.host is None:
        return False
    info = driver.guest_info(vm.domain_name)
    return info is not None and info.state is GuestState.RUNNING
