"""Moving VMs between hosts: live migration with storage, cold migration, and their plans.

A move claims room on the destination (``moving_to``) in the same transaction that records the
operation, so nothing else can take that room meanwhile. The record switches to the destination
only once the guest runs there; a move that fails or is aborted leaves the VM where it was,
running and with its disk intact, and removes what it had made on the destination. Whatever a
host that stopped answering keeps is recorded as a leftover and removed when it answers again.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from flexvm.compute import guest_boot
from flexvm.compute.lifecycle import VmService, remove_guest_and_files
from flexvm.compute.operations import OperationContext
from flexvm.compute.placing import build_request, pool_snapshots
from flexvm.drivers.base import Driver
from flexvm.errors import FlexvmError, InvalidInput, InvalidState, Option, Remedy
from flexvm.model.guest import GuestState, MigrationProgress, MigrationRequest
from flexvm.model.host import Host, HostState
from flexvm.model.image import Image
from flexvm.model.operation import Operation
from flexvm.model.units import format_bytes
from flexvm.model.vm import PowerState, Vm
from flexvm.scheduler.placement import choose
from flexvm.store.repositories import HostRepo, ImageRepo, LeftoverRepo, VmRepo

log = logging.getLogger(__name__)

# Rough rates for estimates in plans (TCG guests on a lab are slower; real hosts faster).
ESTIMATE_MEMORY_MIB_PER_S = 200.0
ESTIMATE_SETUP_SECONDS = 2.0


@dataclass
class MovePlan:
    vm: str
    source: str | None
    destination: str
    mode: str  # "live", "cold" (stopped: disk and definition move), "disk" (deallocated: disk only)
    estimate_seconds: float
    rejected: dict[str, str] = field(default_factory=dict)  # other hosts and why not
    notes: list[str] = field(default_factory=list)


def migration_address(uri: str) -> str | None:
    """Where a host listens for migration data: the host of a remote URI (both lab hosts report
    the same hostname, so libvirt must be told), None for the local one."""
    parsed = urlparse(uri)
    return parsed.hostname if "+" in parsed.scheme else None


def estimate(vm: Vm, mode: str) -> float:
    if mode == "live":
        return ESTIMATE_SETUP_SECONDS + vm.memory_mib / ESTIMATE_MEMORY_MIB_PER_S
    return ESTIMATE_SETUP_SECONDS * 3  # stop, copy the overlay, start (the boot is on top)


class VmMover:
    def __init__(self, vms: VmService, migration_timeout: float) -> None:
        self.vms = vms
        self.db = vms.db
        self.hosts = vms.hosts
        self.images = vms.images
        self.runner = vms.runner
        self.migration_timeout = migration_timeout

    # --- planning ------------------------------------------------------------------------
    def plan(
        self, name: str, to: str | None = None, *, cold: bool = False, excluded: frozenset[str] = frozenset()
    ) -> MovePlan:
        """Where the VM would go and how, without doing anything."""
        self._refuse_snapshots(self.vms.get(name), cold)
        with self.db.session() as session:
            vm = VmRepo(session).get(name)
            image = ImageRepo(session).get(vm.image)
            return self._plan(session, vm, image, to, cold=cold, excluded=excluded)

    def _plan(
        self, session: Any, vm: Vm, image: Image, to: str | None, *, cold: bool, excluded: frozenset[str] = frozenset()
    ) -> MovePlan:
        source = vm.host or vm.disk_host
        if vm.moving_to is not None:
            raise InvalidState(f"VM '{vm.name}' is already moving to {vm.moving_to}")
        if to is not None and to == source:
            raise InvalidInput("to", f"VM '{vm.name}' is already on host {to}")
        hosts = HostRepo(session)
        if to is not None:
            target = hosts.get(to)
            if target.state is not HostState.UP:
                raise InvalidState(
                    f"host {to} is {target.state.value}; it takes no VMs"
                    + (f" ({target.state_reason})" if target.state_reason else "")
                )
        mode = self._mode(vm, cold)
        request = build_request(session, vm, image, pinned=to, excluded=excluded | {source or ""}, disk=True)
        if mode == "disk":  # a deallocated VM needs only room for its disk
            request = dataclasses.replace(request, vcpus=0, memory_mib=0)
        placement = choose(pool_snapshots(session, lock=False), request)
        notes = self._notes(vm, placement.host, hosts.get(source) if source else None, mode)
        rejected = {k: v for k, v in placement.rejected.items() if k != source}
        return MovePlan(vm.name, source, placement.host.name, mode, estimate(vm, mode), rejected, notes)

    def _refuse_snapshots(self, vm: Vm, cold: bool) -> None:
        """libvirt cannot live-migrate a guest that has snapshots; say so before anything moves."""
        if cold or vm.host is None or vm.power_state is not PowerState.RUNNING:
            return
        try:
            snapshots = self.hosts.driver(vm.host).list_snapshots(vm.domain_name)
        except FlexvmError:
            return  # the host will say what is wrong when the move is tried
        if snapshots:
            raise InvalidState(
                f"VM '{vm.name}' has snapshots ({', '.join(snapshots)}), and libvirt cannot move those live: "
                "delete them, or move it cold",
                details={"snapshots": snapshots},
                remedy=Remedy(option=Option.COLD),
            )

    @staticmethod
    def _mode(vm: Vm, cold: bool) -> str:
        if vm.power_state is PowerState.DEALLOCATED:
            return "disk"
        if vm.power_state in (PowerState.RUNNING, PowerState.STARTING):
            return "cold" if cold else "live"
        if vm.power_state is PowerState.STOPPED:
            return "cold"
        raise InvalidState(
            f"VM '{vm.name}' is {vm.power_state.value}; it can move once it is running, stopped or deallocated"
        )

    @staticmethod
    def _notes(vm: Vm, dest: Host, source: Host | None, mode: str) -> list[str]:
        notes = []
        if mode == "cold" and vm.power_state is PowerState.RUNNING:
            notes.append("the guest is stopped, moved and started again (a cold move)")
        if mode == "cold" and vm.power_state is PowerState.STOPPED:
            notes.append("stopped: its disk and definition move; it stays stopped")
        if mode == "disk":
            notes.append("deallocated: only its disk moves")
        networks = {nic.network for nic in vm.nics if nic.network != "user"}
        if networks and dest.network not in networks:
            raise InvalidState(
                f"host {dest.name} is not on network {', '.join(sorted(networks))}: "
                f"VM '{vm.name}' would lose its address there"
            )
        if source is not None and source.accelerator is not dest.accelerator and mode == "live":
            raise InvalidState(
                f"host {source.name} runs {source.accelerator.value} and {dest.name} runs "
                f"{dest.accelerator.value}: a running guest cannot move between them; move it cold",
                remedy=Remedy(option=Option.COLD),
            )
        return notes

    # --- doing ---------------------------------------------------------------------------
    def migrate(self, name: str, to: str | None = None, *, cold: bool = False) -> Operation:
        """Move a VM: live if it runs (unless ``cold``), its files if it is stopped or deallocated."""
        self._refuse_snapshots(self.vms.get(name), cold)
        with self.db.session() as session:
            vms = VmRepo(session)
            vm = vms.get(name)
            self.vms.check_usable(vm)
            image = ImageRepo(session).get(vm.image)
            plan = self._plan(session, vm, image, to, cold=cold)
            HostRepo(session).lock(plan.destination)
            vm.moving_to = plan.destination  # the room on the destination is held from now on
            operation = self.runner.record(
                session,
                f"vm.migrate-{plan.mode}",
                "vm",
                name,
                vm=vm,
                params={"from": plan.source, "to": plan.destination, "mode": plan.mode},
            )
        return self.runner.launch(operation, lambda ctx: self.move(ctx, vm, image, plan))

    def move(self, ctx: OperationContext, vm: Vm, image: Image, plan: MovePlan) -> dict[str, Any]:
        """The work of a move (also run by drain and resize, inside their own operations)."""
        assert plan.source is not None
        source, dest = self.hosts.driver(plan.source), self.hosts.driver(plan.destination)
        started = time.monotonic()
        try:
            if plan.mode == "live":
                result = self._live(ctx, vm, image, source, dest, plan)
            else:
                result = self._cold(ctx, vm, image, source, dest, plan)
        except BaseException:
            self.vms.update_record(vm.id, moving_to=None)
            raise
        result.update(
            {
                "from": plan.source,
                "to": plan.destination,
                "mode": plan.mode,
                "total_seconds": round(time.monotonic() - started, 3),
            }
        )
        return result

    def _prepare_destination(self, ctx: OperationContext, vm: Vm, image: Image, dest: Driver, plan: MovePlan) -> None:
        with ctx.step("image", f"making sure image '{image.name}' is on {plan.destination}"):
            self.images.ensure_on_host(dest, image)
        with ctx.step("prepare", f"an empty overlay for each disk on {plan.destination}"):
            remove_volumes(dest, vm)  # a failed earlier attempt's
            dest.create_overlay(vm.os_disk.name, guest_boot.image_volume(image, "disk"), image.format, vm.disk_bytes)
            if any(d.role == "seed" for d in vm.disks):
                self.vms.upload_seed(dest, vm)

    def _live(
        self, ctx: OperationContext, vm: Vm, image: Image, source: Driver, dest: Driver, plan: MovePlan
    ) -> dict[str, Any]:
        self._prepare_destination(ctx, vm, image, dest, plan)
        dest_host = self.hosts.get(plan.destination)
        request = MigrationRequest(
            dest_uri=dest_host.uri,
            dest_address=migration_address(dest_host.uri),
            copy_storage=True,
            max_seconds=self.migration_timeout,
        )

        def report(progress: MigrationProgress) -> None:
            done = progress.memory_processed + progress.disk_processed
            total = max(progress.memory_total + progress.disk_total, 1)
            remaining = progress.memory_remaining + progress.disk_remaining
            ctx.progress(
                30 + int(60 * min(done / total, 1.0)),
                f"{progress.phase}: {format_bytes(done)} sent, {format_bytes(remaining)} to go",
            )

        try:
            with ctx.step("migrate", f"live to {plan.destination}, disks copied"):
                result = source.migrate(vm.domain_name, request, report)
        except FlexvmError:
            if self._runs_on(dest, vm):  # it switched over before the error: it lives there now
                log.warning("migration of %s reported an error but the guest runs on %s", vm.name, plan.destination)
                self._switch_record(vm, plan.destination)
                self._forget_on_source(vm, source, plan.source or "")
                return {"downtime_ms": None, "note": "the source failed after switch-over"}
            self._undo_destination(vm, dest, plan.destination)
            raise
        self._switch_record(vm, plan.destination)
        self._forget_on_source(vm, source, plan.source or "")
        return {
            "downtime_ms": result.downtime_ms,
            "memory_bytes": result.memory_bytes,
            "disk_bytes": result.disk_bytes,
            "converged_by": result.converged_by,
            "migration_seconds": round(result.total_seconds, 3),
        }

    def _cold(
        self, ctx: OperationContext, vm: Vm, image: Image, source: Driver, dest: Driver, plan: MovePlan
    ) -> dict[str, Any]:
        was_running = vm.power_state in (PowerState.RUNNING, PowerState.STARTING)
        if was_running:
            self.vms.update_record(vm.id, power_state=PowerState.STOPPING)
            self.vms.power_off(ctx, source, vm, force=False)
            self.vms.update_record(vm.id, power_state=PowerState.STOPPED)
        try:
            with ctx.step("image", f"making sure image '{image.name}' is on {plan.destination}"):
                self.images.ensure_on_host(dest, image)
            with (
                ctx.step("copy", f"copying the disk of {vm.name} to {plan.destination}"),
                tempfile.TemporaryDirectory(prefix="flexvm-move-") as tmp,
            ):
                remove_volumes(dest, vm)
                local = Path(tmp) / vm.os_disk.name
                source.download_instance_volume(vm.os_disk.name, local)
                dest.upload_instance_volume(vm.os_disk.name, local)
                if any(d.role == "seed" for d in vm.disks):
                    self.vms.upload_seed(dest, vm)
            if plan.mode == "cold":
                host = self.hosts.get(plan.destination)
                with ctx.step("define", f"defining the guest on {plan.destination}"):
                    dest.define(guest_boot.guest_spec(vm, image, host.accelerator, host.bridge))
        except BaseException:
            self._undo_destination(vm, dest, plan.destination)
            if was_running:
                self._restart_after_failed_move(ctx, vm, source)
            raise
        self._switch_record(vm, plan.destination)
        self._forget_on_source(vm, source, plan.source or "")
        if not was_running:
            return {"mode": plan.mode}
        moved = self.vms.get(vm.name)
        offset = guest_boot.console_length(dest, vm.console_log)
        self.vms.update_record(vm.id, power_state=PowerState.STARTING)
        with ctx.step("start", f"powering on at {plan.destination}"):
            started = time.monotonic()
            dest.start(vm.domain_name)
        return {
            "mode": plan.mode,
            **self.vms.finish_boot(ctx, dest, moved, image, console_offset=offset, started=started, creating=False),
        }

    def _restart_after_failed_move(self, ctx: OperationContext, vm: Vm, source: Driver) -> None:
        try:
            with ctx.step("restart-here", "the move failed: starting the guest again where it was"):
                source.start(vm.domain_name)
            self.vms.update_record(vm.id, power_state=PowerState.RUNNING)
        except FlexvmError as err:
            log.warning("could not restart %s after a failed move: %s", vm.name, err.message)

    # --- records and clean-up ------------------------------------------------------------
    def _switch_record(self, vm: Vm, dest: str) -> None:
        def apply(v: Vm) -> None:
            v.host = dest if v.host is not None else None
            v.disk_host = dest
            v.moving_to = None
            if v.host is not None and v.power_state is PowerState.UNKNOWN:
                v.power_state = PowerState.RUNNING

        self.vms.change_record(vm.id, apply)

    def _forget_on_source(self, vm: Vm, source: Driver, source_name: str) -> None:
        """Keep the source's console log, then remove the guest and its files there."""
        try:
            self.vms.consoles.keep(vm.id, source, vm.console_log)
            remove_guest_and_files(source, vm)
        except FlexvmError as err:
            self._leftovers(source_name, vm, f"move of VM {vm.name} away: {err.message}")

    def _undo_destination(self, vm: Vm, dest: Driver, dest_name: str) -> None:
        try:
            if not self._runs_on(dest, vm):
                dest.destroy(vm.domain_name)
                dest.undefine(vm.domain_name)
            remove_volumes(dest, vm)
        except FlexvmError as err:
            self._leftovers(dest_name, vm, f"failed move of VM {vm.name}: {err.message}")

    def _leftovers(self, host: str, vm: Vm, reason: str) -> None:
        with self.db.session() as session:
            repo = LeftoverRepo(session)
            repo.add(host, "domain", vm.domain_name, reason)
            for volume in [d.name for d in vm.disks] + [vm.console_log]:
                repo.add(host, "volume", volume, reason)

    @staticmethod
    def _runs_on(driver: Driver, vm: Vm) -> bool:
        try:
            info = driver.guest_info(vm.domain_name)
        except FlexvmError:
            return False
        return info is not None and info.state is GuestState.RUNNING


def remove_volumes(driver: Driver, vm: Vm) -> None:
    for disk in vm.disks:
        driver.delete_instance_volume(disk.name)
    driver.delete_instance_volume(vm.console_log)
