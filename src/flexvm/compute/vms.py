"""VMs for the edges (API, CLI): reading them, and each operation, which lives in its own module
(vm_create, vm_power, vm_delete, vm_disks; moves and resizes in moving and resize). Services
that need one of them are given that one, not this."""

from __future__ import annotations

from dataclasses import dataclass

from flexvm.compute.hosts import HostService
from flexvm.compute.vm_create import OsDiskSource, VmCreator, check_ha
from flexvm.compute.vm_delete import VmDeleter
from flexvm.compute.vm_disks import VmDisks
from flexvm.compute.vm_power import VmPower
from flexvm.compute.vm_records import VmRecords
from flexvm.errors import NotFound
from flexvm.model.operation import Operation
from flexvm.model.vm import Vm

__all__ = ["ConsoleChunk", "OsDiskSource", "VmService"]


@dataclass
class ConsoleChunk:
    text: str
    next_offset: int


class VmService:
    def __init__(
        self,
        records: VmRecords,
        hosts: HostService,
        creator: VmCreator,
        power: VmPower,
        deleter: VmDeleter,
        disks: VmDisks,
    ) -> None:
        self.records = records
        self.hosts = hosts
        self.creator = creator
        self.power = power
        self.deleter = deleter
        self.disks = disks

    def list(self) -> list[Vm]:
        return self.records.list()

    def get(self, name: str) -> Vm:
        return self.records.get(name)

    def console(self, name: str, offset: int = 0) -> ConsoleChunk:
        """Console output from ``offset``: what earlier hosts logged (archived), then the live log."""
        vm = self.get(name)
        offset = max(0, offset)
        consoles = self.records.consoles
        archived = consoles.size(vm.id)
        data = consoles.read(vm.id, offset) if offset < archived else b""
        host = vm.host or vm.disk_host
        if host is not None:
            data += self.hosts.driver(host).console_read(vm.console_log, max(0, offset - archived), store=vm.storage)
        return ConsoleChunk(data.decode(errors="replace"), offset + len(data))

    def create(self, name: str, size_name: str, image_name: str, **options: object) -> Operation:
        return self.creator.create(name, size_name, image_name, **options)  # type: ignore[arg-type]

    def start(self, name: str) -> Operation:
        return self.power.start(name)

    def stop(self, name: str, *, force: bool = False) -> Operation:
        return self.power.stop(name, force=force)

    def restart(self, name: str) -> Operation:
        return self.power.restart(name)

    def deallocate(self, name: str) -> Operation:
        return self.power.deallocate(name)

    def delete(self, name: str) -> Operation:
        return self.deleter.delete(name)

    def set_ha(self, name: str, ha: bool | None = None, priority: int | None = None) -> Vm:
        """Turn HA on or off, or change its priority (``vm update``); no operation: a record only."""
        vm = self.records.get(name)
        ha = vm.ha if ha is None else ha
        priority = vm.ha_priority if priority is None else priority
        check_ha(ha, priority, vm.storage is not None)

        def apply(v: Vm) -> None:
            v.ha, v.ha_priority = ha, priority

        changed = self.records.change(vm.id, apply)
        if changed is None:
            raise NotFound("VM", name)
        return changed

    def resize_disk(self, name: str, size_bytes: int) -> Operation:
        return self.disks.resize(name, size_bytes)
