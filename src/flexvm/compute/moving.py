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

from sqlalchemy.orm import Session

from flexvm.compute import guest_boot
from flexvm.compute.booting import Booter, upload_seed
from flexvm.compute.hosts import HostService
from flexvm.compute.images import ImageService
from flexvm.compute.placing import build_request, pool_snapshots
from flexvm.compute.vm_records import (
    VmRecords,
    change_in,
    check_usable,
    leave_behind,
    power_step,
    remove_host_copy,
    remove_volumes,
)
from flexvm.config import Settings
from flexvm.drivers.base import Driver
from flexvm.errors import FlexvmError, InvalidInput, InvalidState, NotFound, OperationTimeout, Option, Remedy
from flexvm.model.guest import GuestState, MigrationProgress, MigrationRequest
from flexvm.model.host import Host, HostState
from flexvm.model.image import Image
from flexvm.model.operation import Operation
from flexvm.model.units import format_bytes
from flexvm.model.vm import PowerState, Vm
from flexvm.operations.engine import Engine
from flexvm.operations.run import Run
from flexvm.scheduler.placement import choose
from flexvm.store.db import Database
from flexvm.store.repositories import HostRepo, ImageRepo, VmRepo

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
    def __init__(
        self,
        db: Database,
        engine: Engine,
        hosts: HostService,
        images: ImageService,
        records: VmRecords,
        booter: Booter,
        settings: Settings,
    ) -> None:
        self.db = db
        self.engine = engine
        self.hosts = hosts
        self.images = images
        self.records = records
        self.booter = booter
        self.settings = settings
        self.migration_timeout = settings.migration_timeout
        for mode in MODES:
            engine.register(f"vm.migrate-{mode}", self._work, cancelable=True)

    # --- planning ------------------------------------------------------------------------
    def plan(
        self, name: str, to: str | None = None, *, cold: bool = False, excluded: frozenset[str] = frozenset()
    ) -> MovePlan:
        """Where the VM would go and how, without doing anything."""
        self._refuse_snapshots(self.records.get(name), cold)
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
        self._refuse_snapshots(self.records.get(name), cold)
        with self.db.session() as session:
            vms = VmRepo(session)
            vm = vms.get(name)
            check_usable(vm)
            image = ImageRepo(session).get(vm.image)
            plan = self._plan(session, vm, image, to, cold=cold)
            HostRepo(session).lock(plan.destination)
            vm.moving_to = plan.destination  # the room on the destination is held from now on
            operation = self.engine.record(
                session, f"vm.migrate-{plan.mode}", "vm", name, vm=vm, params=plan_params(vm, plan)
            )
        return self.engine.launch(operation)

    def _work(self, run: Run) -> dict[str, Any]:
        vm = self.records.by_id(run.params["vm_id"])
        if vm is None:
            raise NotFound("VM", run.operation.target_name)
        return self.move(run, vm, self.images.get(vm.image), plan_from(run.params))

    def move(self, run: Run, vm: Vm, image: Image, plan: MovePlan) -> dict[str, Any]:
        """The steps of a move (also run inside a resize that moves first).

        The room on the destination was held with the request (``moving_to``); the first step
        stands for that hold, and undoing it lets the room go."""
        assert plan.source is not None
        source, dest = self.hosts.driver(plan.source), self.hosts.driver(plan.destination)
        outer = run.undo_mark()  # what the operation around the move may still undo after it
        # Whether the guest ran is decided once, here, and replayed from the record: a resumed
        # cold move finds the VM stopped by its own first steps, and must still take their path.
        running = vm.power_state in (PowerState.RUNNING, PowerState.STARTING)
        began: dict[str, Any] = run.step(
            "hold",
            lambda: {"at": time.time(), "to": plan.destination, "running": running},
            undo=lambda _out: self._let_go(vm),
            detail=f"room held on {plan.destination}",
        )
        if plan.mode == "live":
            result = self._live(run, vm, image, source, dest, plan, outer)
        else:
            result = self._cold(run, vm, image, source, dest, plan, outer, bool(began.get("running", running)))
        result.update(
            {
                "from": plan.source,
                "to": plan.destination,
                "mode": plan.mode,
                "total_seconds": round(time.time() - began["at"], 3),
            }
        )
        return result

    def _prepare_destination(self, run: Run, vm: Vm, image: Image, dest: Driver, plan: MovePlan) -> None:
        run.step(
            "image",
            lambda: self.images.ensure_on_host(dest, image),
            detail=f"making sure image '{image.name}' is on {plan.destination}",
        )

        if vm.storage is not None:
            return  # both hosts see the disks already: nothing to make there

        def prepare() -> None:
            remove_volumes(dest, vm)  # a failed earlier attempt's (a resumed move finds them empty)
            dest.create_overlay(vm.os_disk.name, guest_boot.image_volume(image, "disk"), image.format, vm.disk_bytes)
            if any(d.role == "seed" for d in vm.disks):
                upload_seed(dest, vm, self.settings.ssh_keys)

        run.step(
            "prepare",
            prepare,
            undo=lambda _out: self._undo_destination(vm, dest, plan.destination),
            undo_if_failed=True,
            detail=f"an empty overlay for each disk on {plan.destination}",
        )

    def _live(
        self, run: Run, vm: Vm, image: Image, source: Driver, dest: Driver, plan: MovePlan, outer: int
    ) -> dict[str, Any]:
        self._prepare_destination(run, vm, image, dest, plan)
        dest_host = self.hosts.get(plan.destination)
        request = MigrationRequest(
            dest_uri=dest_host.uri,
            dest_address=migration_address(dest_host.uri),
            copy_storage=vm.storage is None,  # on shared storage only the memory moves
            max_seconds=self.migration_timeout,
        )

        def report(progress: MigrationProgress) -> None:
            run.check_canceled()  # raising here aborts the migration: the guest stays where it was
            done = progress.memory_processed + progress.disk_processed
            total = max(progress.memory_total + progress.disk_total, 1)
            remaining = progress.memory_remaining + progress.disk_remaining
            run.progress(
                30 + int(60 * min(done / total, 1.0)),
                f"{progress.phase}: {format_bytes(done)} sent, {format_bytes(remaining)} to go",
            )

        def migrate() -> dict[str, Any]:
            if _runs_on(dest, vm):  # a resumed move: it had switched over before the server died
                return {"downtime_ms": None, "note": "the guest already ran on the destination"}
            _wait_for_running_migration(source, vm, self.migration_timeout)
            if _runs_on(dest, vm):
                return {"downtime_ms": None, "note": "a migration started before a restart finished it"}
            self.hosts.isolation.spread(vm, required=plan.destination)  # the guest's NIC names it
            try:
                result = source.migrate(vm.domain_name, request, report)
            except FlexvmError:
                if _runs_on(dest, vm):  # it switched over before the error: it lives there now
                    log.warning("migration of %s reported an error but the guest runs on %s", vm.name, plan.destination)
                    return {"downtime_ms": None, "note": "the source failed after switch-over"}
                raise
            return {
                "downtime_ms": result.downtime_ms,
                "memory_bytes": result.memory_bytes,
                "disk_bytes": result.disk_bytes,
                "converged_by": result.converged_by,
                "migration_seconds": round(result.total_seconds, 3),
            }

        how = "disks copied" if vm.storage is None else f"memory only (disks on shared storage '{vm.storage.name}')"
        moved = run.step("migrate", migrate, detail=f"live to {plan.destination}, {how}")
        self._switch(run, vm, source, plan, outer)
        return dict(moved)

    def _cold(
        self,
        run: Run,
        vm: Vm,
        image: Image,
        source: Driver,
        dest: Driver,
        plan: MovePlan,
        outer: int,
        was_running: bool,
    ) -> dict[str, Any]:
        if was_running:
            power_step(run, "stopping", vm.id, PowerState.STOPPING)
            self.booter.power_off(run, source, vm, force=False)
            run.step(
                "stopped-here",
                lambda: None,
                undo=lambda _out: self._restart_after_failed_move(run, vm, source),
                detail=f"stopped on {plan.source}",
            )
            power_step(run, "stopped", vm.id, PowerState.STOPPED)
        run.step(
            "image",
            lambda: self.images.ensure_on_host(dest, image),
            detail=f"making sure image '{image.name}' is on {plan.destination}",
        )

        def copy() -> None:
            with tempfile.TemporaryDirectory(prefix="flexvm-move-") as tmp:
                remove_volumes(dest, vm)
                local = Path(tmp) / vm.os_disk.name
                source.download_instance_volume(vm.os_disk.name, local)
                dest.upload_instance_volume(vm.os_disk.name, local)
                if any(d.role == "seed" for d in vm.disks):
                    upload_seed(dest, vm, self.settings.ssh_keys)

        if vm.storage is None:
            run.step(
                "copy",
                copy,
                undo=lambda _out: self._undo_destination(vm, dest, plan.destination),
                undo_if_failed=True,
                detail=f"copying the disk of {vm.name} to {plan.destination}",
            )
        if plan.mode == "cold":
            host = self.hosts.get(plan.destination)

            def define() -> None:
                self.hosts.isolation.spread(vm, required=plan.destination)
                if dest.guest_info(vm.domain_name) is None:
                    isolated = self.hosts.isolation.isolates(host)
                    dest.define(guest_boot.guest_spec(vm, image, host.accelerator, host.bridge, isolated=isolated))

            run.step("define", define, detail=f"defining the guest on {plan.destination}")
        self._switch(run, vm, source, plan, outer)
        if not was_running:
            return {"mode": plan.mode}
        moved = self.records.get(vm.name)
        power_step(run, "starting", vm.id, PowerState.STARTING)
        return {"mode": plan.mode, **self.booter.boot(run, dest, moved, image, creating=False)}

    def _let_go(self, vm: Vm) -> None:
        """The room held on the destination is free again."""
        self.records.change(vm.id, _clear_moving)

    def _restart_after_failed_move(self, run: Run, vm: Vm, source: Driver) -> None:
        try:
            if not _runs_on(source, vm):
                source.start(vm.domain_name)
            self.records.set_power(vm.id, PowerState.RUNNING, run.id)
        except FlexvmError as err:
            log.warning("could not restart %s after a failed move: %s", vm.name, err.message)

    # --- records and clean-up ------------------------------------------------------------
    def _switch(self, run: Run, vm: Vm, source: Driver, plan: MovePlan, outer: int) -> None:
        """The record follows the guest to its new host; from here the move is not undone."""

        def switch(session: Session) -> None:
            def apply(v: Vm) -> None:
                v.host = plan.destination if v.host is not None else None
                v.disk_host = plan.destination
                v.moving_to = None
                if v.host is not None and v.power_state is PowerState.UNKNOWN:
                    v.set_power(PowerState.RUNNING, run.id)

            change_in(session, vm.id, apply)

        run.db_step("switch", switch, detail=f"the record now says {plan.destination}")
        run.pivot("moved", f"{vm.name} lives on {plan.destination}", keep=outer)
        run.step(
            "forget-source",
            lambda: self._forget_on_source(vm, source, plan.source or ""),
            detail=f"removing what {plan.source} kept (its console log archived first)",
        )

    def _forget_on_source(self, vm: Vm, source: Driver, source_name: str) -> None:
        """Keep the source's console log, then remove the guest and its files there."""
        try:
            if vm.storage is None:  # a shared console log goes on being written where it is
                self.records.consoles.keep(vm.id, source, vm.console_log)
            remove_host_copy(source, vm)
        except FlexvmError as err:
            leave_behind(self.db, source_name, vm, f"move of VM {vm.name} away: {err.message}")

    def _undo_destination(self, vm: Vm, dest: Driver, dest_name: str) -> None:
        try:
            if not _runs_on(dest, vm):
                remove_host_copy(dest, vm)
        except FlexvmError as err:
            leave_behind(self.db, dest_name, vm, f"failed move of VM {vm.name}: {err.message}")


MODES = ("live", "cold", "disk")


def plan_params(vm: Vm, plan: MovePlan) -> dict[str, Any]:
    """A move as an operation records it: enough to run (or resume) it."""
    return {
        "vm_id": vm.id,
        "vm": plan.vm,
        "from": plan.source,
        "to": plan.destination,
        "mode": plan.mode,
        "estimate_seconds": plan.estimate_seconds,
    }


def plan_from(params: dict[str, Any]) -> MovePlan:
    return MovePlan(params["vm"], params["from"], params["to"], params["mode"], params["estimate_seconds"])


def _clear_moving(vm: Vm) -> None:
    vm.moving_to = None


def _runs_on(driver: Driver, vm: Vm) -> bool:
    try:
        info = driver.guest_info(vm.domain_name)
    except FlexvmError:
        return False
    return info is not None and info.state is GuestState.RUNNING


def _wait_for_running_migration(source: Driver, vm: Vm, timeout: float) -> None:
    """A migration started by a server that died may still be running in libvirt: let it end
    (in the guest's favour or not) before deciding whether to start one."""
    deadline = time.monotonic() + timeout + 60
    while source.migration_running(vm.domain_name):
        if time.monotonic() > deadline:
            raise OperationTimeout(f"a migration of {vm.name} started earlier is still running after {timeout:.0f} s")
        time.sleep(0.5)
