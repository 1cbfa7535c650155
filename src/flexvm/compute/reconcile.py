"""Making the records and the hosts agree: at server start, and on a schedule after.

Interrupted operations are not this module's business: the engine resumes each from its recorded
steps. Here each VM's power state is re-read from its host: a guest that powered itself off is
recorded stopped, a host that does not answer leaves its VMs 'unknown' (not lost). Domains flexvm
did not make are reported and left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flexvm.compute.hosts import HostService, call_with_timeout
from flexvm.compute.vm_records import power_state_of
from flexvm.drivers.base import Driver
from flexvm.errors import FlexvmError
from flexvm.model.host import HostState
from flexvm.model.vm import PowerState, ProvisioningState, Vm
from flexvm.store.db import Database
from flexvm.store.repositories import VmRepo

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    operations: dict[str, str] = field(default_factory=dict)  # operation id -> what was done
    power_changes: dict[str, str] = field(default_factory=dict)  # VM -> "running -> stopped"
    unmanaged: dict[str, list[str]] = field(default_factory=dict)  # host -> domain names
    unreachable: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(self, db: Database, hosts: HostService, timeout: float | None = None) -> None:
        self.timeout = timeout  # how long one host may take to list its guests; None: no limit
        self.db = db
        self.hosts = hosts

    def at_start(self, resumed: list[str] | None = None) -> ReconcileReport:
        """What a starting server reports: the operations it took up from servers that died
        (the engine resumes them from their steps), and every host's guests read back."""
        report = ReconcileReport(operations={op_id: "resumed" for op_id in resumed or []})
        self.sync(report)
        for op_id in report.operations:
            log.info("resuming operation %s where it stood", op_id)
        for host, names in report.unmanaged.items():
            log.info("host %s has guests flexvm does not manage (left alone): %s", host, ", ".join(names))
        return report

    # --- periodic sync -------------------------------------------------------------------
    def sync(self, report: ReconcileReport | None = None) -> ReconcileReport:
        """Re-read every host's guests; record power states of VMs no operation is changing."""
        report = report or ReconcileReport()
        for host in self.hosts.list():
            if host.state is HostState.MAINTENANCE:
                continue
            if host.state in (HostState.SUSPECT, HostState.FAILED, HostState.FENCED):
                # Failure handling (compute.failover) says what its VMs are; not asked again here.
                report.unreachable.append(host.name)
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
                    key=f"list_guests {host.uri}",
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
                    changed = self._record_power(vm, driver)
                    if changed is not None:
                        report.power_changes[vm.name] = changed
        return report

    def _mark_unknown(self, host: str) -> None:
        with self.db.session() as session:
            repo = VmRepo(session)
            for vm in repo.list(host=host):
                if vm.active_operation_id is None and vm.power_state is not PowerState.UNKNOWN:
                    vm.set_power(PowerState.UNKNOWN)
                    repo.save(vm)

    def _known_id(self, vm_id: str) -> bool:
        with self.db.session() as session:
            return VmRepo(session).by_id(vm_id) is not None

    # --- helpers -------------------------------------------------------------------------
    def _record_power(self, seen: Vm, driver: Driver) -> str | None:
        """Record the guest's power state, unless an operation took the VM since the guests were
        listed: the list may predate what that operation did (a resumed create defines and
        starts the guest after it). The host is asked again (outside any unit of work: a host
        that hangs must not hold the database), then the state is written only if the record is
        still exactly as seen before that question — so nothing changed it in between."""
        try:
            guest = call_with_timeout(
                lambda: driver.guest_info(seen.domain_name),
                self.timeout,
                f"the host of {seen.name} did not answer within {self.timeout} s",
            )
        except FlexvmError as err:  # the next pass asks again
            log.warning("not recording %s's power state: %s", seen.name, err)
            return None
        observed = power_state_of(guest.state if guest else None)
        if observed is seen.power_state:
            return None
        with self.db.session() as session:
            repo = VmRepo(session)
            current = repo.by_id(seen.id)
            if current is None or current != seen:
                return None
            change = f"{current.power_state.value} -> {observed.value}"
            current.set_power(observed)
            repo.save(current)
            return change
