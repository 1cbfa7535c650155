"""Making the records and the hosts agree: at server start, and on a schedule after.

At start, every operation the previous server left pending or running is finished or rolled
back (a create whose guest never became ready is undone, a delete is completed). Then, and
periodically, each VM's power state is re-read from its host: a guest that powered itself off
is recorded stopped, a host that does not answer leaves its VMs 'unknown' (not lost). Domains
flexvm did not make are reported and left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flexvm.compute import guest_boot
from flexvm.compute.hosts import HostService, call_with_timeout
from flexvm.compute.lifecycle import VmService, power_state_of, remove_guest_and_files
from flexvm.errors import FlexvmError
from flexvm.model.guest import GuestState
from flexvm.model.host import HostState
from flexvm.model.operation import Operation, OperationStatus
from flexvm.model.vm import PowerState, ProvisioningState, Vm
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import LeftoverRepo, OperationRepo, VmRepo

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted by a server restart"


@dataclass
class ReconcileReport:
    operations: dict[str, str] = field(default_factory=dict)  # operation id -> what was done
    power_changes: dict[str, str] = field(default_factory=dict)  # VM -> "running -> stopped"
    unmanaged: dict[str, list[str]] = field(default_factory=dict)  # host -> domain names
    unreachable: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(self, db: Database, hosts: HostService, vms: VmService, timeout: float | None = None) -> None:
        self.timeout = timeout  # how long one host may take to list its guests; None: no limit
        self.db = db
        self.hosts = hosts
        self.vms = vms

    def at_start(self) -> ReconcileReport:
        report = ReconcileReport()
        with self.db.session() as session:
            leftovers = OperationRepo(session).list(
                limit=10_000, statuses=[OperationStatus.PENDING, OperationStatus.RUNNING]
            )
        for operation in leftovers:
            try:
                report.operations[operation.id] = self._recover(operation)
            except FlexvmError as err:
                report.operations[operation.id] = f"could not recover: {err.message}"
                self._close(operation, ok=False, message=f"{INTERRUPTED}; recovery failed: {err.message}")
        self.sync(report)
        for op_id, what in report.operations.items():
            log.info("recovered operation %s: %s", op_id, what)
        for host, names in report.unmanaged.items():
            log.info("host %s has guests flexvm does not manage (left alone): %s", host, ", ".join(names))
        return report

    # --- interrupted operations ----------------------------------------------------------
    def _recover(self, operation: Operation) -> str:
        settled = self._settle_moves(operation)
        vm = self._vm_of(operation)
        if operation.kind == "vm.create" and vm is not None:
            return self._recover_create(operation, vm)
        if operation.kind == "vm.delete" and vm is not None:
            host = vm.host or vm.disk_host
            if host is not None:
                remove_guest_and_files(self.hosts.driver(host), vm)
            self.vms.discard(vm)
            self._close(operation, ok=True, message=f"{INTERRUPTED}; the delete was completed")
            return "delete completed"
        if operation.kind.startswith("vm.") and vm is not None:
            state = self._resync_after(operation, vm)
            self._close(operation, ok=False, message=f"{INTERRUPTED}; VM state re-read from its host: {state}")
            return f"state re-read: {state}"
        summary = f"; moves: {'; '.join(settled)}" if settled else ""
        self._close(operation, ok=False, message=f"{INTERRUPTED}; start it again{summary}")
        return "marked failed" + summary

    def _settle_moves(self, operation: Operation) -> list[str]:
        """Moves the operation had in flight (a migration, a drain): each VM is recorded where its
        guest runs now, and what the other host keeps is recorded as leftovers there."""
        with self.db.session() as session:
            held = [vm for vm in VmRepo(session).held_by(operation.id) if vm.moving_to is not None]
        outcomes = []
        for vm in held:
            assert vm.moving_to is not None
            dest, source = vm.moving_to, vm.host or vm.disk_host
            try:
                info = self.hosts.driver(dest).guest_info(vm.domain_name)
            except FlexvmError:
                info = None
            arrived = info is not None and info.state is GuestState.RUNNING
            stale = source if arrived else dest

            def apply(v: Vm, arrived: bool = arrived, dest: str = dest) -> None:
                if arrived:
                    v.host, v.disk_host = dest, dest
                v.moving_to = None

            self._change(vm, apply)
            with self.db.session() as session:
                leftovers = LeftoverRepo(session)
                for name in [vm.domain_name, *(d.name for d in vm.disks), vm.console_log]:
                    kind = "domain" if name == vm.domain_name else "volume"
                    if stale is not None:  # a cold move may have defined it there already
                        leftovers.add(stale, kind, name, f"interrupted move of VM {vm.name}")
            outcomes.append(f"{vm.name} on {dest if arrived else source}")
        return outcomes

    def _recover_create(self, operation: Operation, vm: Vm) -> str:
        assert vm.host is not None
        driver = self.hosts.driver(vm.host)
        image = self.vms.images.get(vm.image)
        info = driver.guest_info(vm.domain_name)
        console = driver.console_read(vm.console_log, 0).decode(errors="replace")
        ready_line = next(
            (line for line in console.splitlines() if image.ready_marker and image.ready_marker in line), None
        )
        if info is not None and info.state is GuestState.RUNNING and ready_line is not None:
            facts = guest_boot.parse_fields(ready_line)

            def finish(v: Vm) -> None:
                v.provisioning_state, v.power_state = ProvisioningState.SUCCEEDED, PowerState.RUNNING
                v.ready_at, v.active_operation_id = utcnow(), None
                for nic in v.nics[:1]:
                    if nic.network == "user":  # a reserved address stays the record
                        nic.ip = facts.get("ip") if facts.get("ip") not in (None, "none") else None

            self._change(vm, finish)
            self._close(operation, ok=True, message=f"{INTERRUPTED}; the guest had become ready, create completed")
            return "create completed"
        remove_guest_and_files(driver, vm)
        self.vms.discard(vm)
        self._close(
            operation, ok=False, message=f"{INTERRUPTED}; the create was rolled back (guest, disks and claim removed)"
        )
        return "create rolled back"

    def _resync_after(self, operation: Operation, vm: Vm) -> str:
        """An interrupted power change: record what the host shows now, and finish deallocations."""
        host = vm.host or vm.disk_host
        assert host is not None
        driver = self.hosts.driver(host)
        info = driver.guest_info(vm.domain_name)
        running = info is not None and info.state is GuestState.RUNNING
        deallocating = operation.kind == "vm.deallocate" or (
            operation.kind == "vm.start" and operation.params.get("was") == PowerState.DEALLOCATED.value
        )
        if deallocating and not running:
            driver.undefine(vm.domain_name)
            state = PowerState.DEALLOCATED
        else:
            state = power_state_of(info.state if info else None)

        def apply(v: Vm) -> None:
            v.active_operation_id = None
            v.power_state = state
            if state is PowerState.DEALLOCATED:
                v.host = None  # release the claim
            if operation.kind == "vm.resize-disk" and "from" in operation.params:
                v.disk_bytes = int(operation.params["from"])  # drop the claim of an unfinished grow
            if operation.kind == "vm.resize" and "from_vcpus" in operation.params:
                # The new size was claimed at request time: record the shape the guest really has.
                v.vcpus = info.vcpus if running and info else int(operation.params["from_vcpus"])
                v.memory_mib = info.memory_kib // 1024 if running and info else int(operation.params["from_memory_mib"])
                if (v.vcpus, v.memory_mib) == (operation.params["from_vcpus"], operation.params["from_memory_mib"]):
                    v.size = str(operation.params.get("from", v.size))

        self._change(vm, apply)
        return state.value

    # --- periodic sync -------------------------------------------------------------------
    def sync(self, report: ReconcileReport | None = None) -> ReconcileReport:
        """Re-read every host's guests; record power states of VMs no operation is changing."""
        report = report or ReconcileReport()
        for host in self.hosts.list():
            if host.state is HostState.MAINTENANCE:
                continue
            if host.state is HostState.DOWN:
                # Known unreachable (the health check said so): do not wait on it again.
                report.unreachable.append(host.name)
                self._mark_unknown(host.name)
                continue
            try:
                driver = self.hosts.drivers.for_uri(host.uri)
                listed = call_with_timeout(
                    driver.list_guests,
                    self.timeout,
                    f"host {host.name} did not list its guests within {self.timeout} s",
                )
                guests = {g.name: g for g in listed}
            except FlexvmError:
                report.unreachable.append(host.name)
                self._mark_unknown(host.name)
                continue
            with self.db.session() as session:
                placed = VmRepo(session).list(host=host.name)
            ids = {vm.id for vm in placed}
            report.unmanaged[host.name] = sorted(
                g.name
                for g in guests.values()
                if g.vm_id is None or (g.vm_id not in ids and not self._known_id(g.vm_id))
            )
            if not report.unmanaged[host.name]:
                del report.unmanaged[host.name]
            for vm in placed:
                if vm.active_operation_id is not None or vm.provisioning_state is ProvisioningState.DELETING:
                    continue
                guest = guests.get(vm.domain_name)
                observed = power_state_of(guest.state if guest else None)
                if observed is not vm.power_state and vm.power_state in (
                    PowerState.RUNNING,
                    PowerState.STOPPED,
                    PowerState.UNKNOWN,
                    PowerState.STARTING,
                    PowerState.STOPPING,
                ):
                    report.power_changes[vm.name] = f"{vm.power_state.value} -> {observed.value}"
                    self._change(vm, lambda v, s=observed: setattr(v, "power_state", s))
        return report

    def _mark_unknown(self, host: str) -> None:
        with self.db.session() as session:
            repo = VmRepo(session)
            for vm in repo.list(host=host):
                if vm.active_operation_id is None and vm.power_state is not PowerState.UNKNOWN:
                    vm.power_state = PowerState.UNKNOWN
                    repo.save(vm)

    def _known_id(self, vm_id: str) -> bool:
        with self.db.session() as session:
            return VmRepo(session).by_id(vm_id) is not None

    # --- helpers -------------------------------------------------------------------------
    def _vm_of(self, operation: Operation) -> Vm | None:
        if operation.target_kind != "vm":
            return None
        with self.db.session() as session:
            vm = VmRepo(session).find(operation.target_name)
        if vm is None or vm.active_operation_id not in (None, operation.id):
            return None
        return vm

    def _change(self, vm: Vm, apply: object) -> None:
        with self.db.session() as session:
            repo = VmRepo(session)
            current = repo.by_id(vm.id)
            if current is not None:
                apply(current)  # type: ignore[operator]
                repo.save(current)

    def _close(self, operation: Operation, *, ok: bool, message: str) -> None:
        operation.status = OperationStatus.SUCCEEDED if ok else OperationStatus.FAILED
        operation.message = message
        operation.finished_at = utcnow()
        if not ok:
            operation.error = {"code": "Interrupted", "message": message, "details": {}}
        with self.db.session() as session:
            OperationRepo(session).save(operation)
            repo = VmRepo(session)
            for vm in repo.held_by(operation.id):  # a drain or rebalance holds several
                vm.active_operation_id = None
                repo.save(vm)
