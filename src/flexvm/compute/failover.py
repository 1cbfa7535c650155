"""Failure handling: suspect, failed, fenced, and the VMs of a fenced host started elsewhere.

    up ──misses a check──▶ suspect ──missed for fail_seconds, and the fence agent's second
     ▲                      │                opinion agrees──▶ failed ──fenced──▶ fenced
     └── answers again ─────┴─────────── (no fence under way) ──┴────────────────────┘

A host with a fence agent that misses a health check is suspect (hosts.refresh). Each round of
checks, ``review`` fails the suspects that have missed for ``fail_seconds`` and whose agent cannot
reach them either, and starts a ``host.fence`` operation for each: the agent powers the host off
and confirms it is off (a manual agent waits for an operator's ``fence-confirm``). Only then do its
HA VMs on shared storage start on other hosts, in priority order, each as a ``vm.restart-elsewhere``
operation through the normal placement (quotas do not apply: the VM existed already). Its other
VMs are marked unavailable, saying why, and come back with it. More hosts failing at once than
``ha_max_failed_hosts`` looks like a network blip, not failed hosts: they are held failed with an
alert in their reason, and nothing is fenced or restarted until an operator fences them by hand.

The second guard against a VM running twice is libvirt's lock manager: a disk on shared storage
that a guest holds cannot be opened by a second one (see docs/decisions/0005-shared-storage.md).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from flexvm.compute import guest_boot
from flexvm.compute.booting import Booter, runs
from flexvm.compute.hosts import HostService
from flexvm.compute.images import ImageService
from flexvm.compute.placing import build_request, pool_snapshots
from flexvm.compute.vm_records import VmRecords, change_in, remove_host_copy
from flexvm.config import Settings
from flexvm.errors import Busy, CapacityError, FenceFailed, FlexvmError, InvalidState, NotFound
from flexvm.fencing.agents import Fencer, Opinion, fencer_for
from flexvm.model.host import Host, HostState
from flexvm.model.operation import Operation
from flexvm.model.vm import PowerState, Vm
from flexvm.operations.engine import UNFINISHED, Engine
from flexvm.operations.run import Run
from flexvm.scheduler.placement import choose
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import HostRepo, ImageRepo, LeftoverRepo, OperationRepo, VmRepo

log = logging.getLogger(__name__)

FENCE = "host.fence"
RESTART = "vm.restart-elsewhere"
WAS_RUNNING = (PowerState.RUNNING, PowerState.STARTING, PowerState.UNKNOWN)

StartVm = Callable[[str], Operation]


class Failover:
    def __init__(
        self,
        db: Database,
        engine: Engine,
        hosts: HostService,
        images: ImageService,
        records: VmRecords,
        booter: Booter,
        settings: Settings,
        agent_of: Callable[[Host], Fencer | None] = fencer_for,
    ) -> None:
        self.db = db
        self.engine = engine
        self.hosts = hosts
        self.images = images
        self.records = records
        self.booter = booter
        self.settings = settings
        self.agent_of = agent_of
        self.start_vm: StartVm | None = None  # set by the platform (VmPower.start): VMs that come back
        engine.register(FENCE, self._fence_work)
        engine.register(RESTART, self._restart_work)

    # --- judging, after each round of health checks ------------------------------------------
    def review(self) -> list[Operation]:
        """Fail the suspects that have missed long enough and whose agent agrees, and start
        fencing them (unless too many fail at once). Returns the fence operations started."""
        hosts = self.hosts.list()
        now = utcnow()
        due = [h for h in hosts if h.state is HostState.SUSPECT and _missed_for(h, now) >= self.settings.fail_seconds]
        if not due:
            return []
        opinions = {h.name: self._opinion(h) for h in due}
        failing = [h for h in due if opinions[h.name].confirms]
        for host in due:
            if not opinions[host.name].confirms:
                self._note(
                    host.name,
                    HostState.SUSPECT,
                    f"missed its checks for {_missed_for(host, now):.0f} s, but {opinions[host.name].seen}",
                )
        troubled = sorted(h.name for h in hosts if h.state in (HostState.SUSPECT, HostState.FAILED))
        held = len(troubled) > self.settings.ha_max_failed_hosts
        started = []
        for host in failing:
            operation = self._fail(host, opinions[host.name], held, troubled)
            if operation is not None:
                started.append(self.engine.launch(operation))
        return started

    def _opinion(self, host: Host) -> Opinion:
        agent = self.agent_of(host)
        if agent is None:
            return Opinion(False, "it has no fence agent")
        try:
            return agent.second_opinion()
        except FlexvmError as err:
            return Opinion(False, f"its fence agent could not be asked: {err.message}")

    def _fail(self, host: Host, opinion: Opinion, held: bool, troubled: list[str]) -> Operation | None:
        agent = self.agent_of(host)
        automatic = agent is not None and agent.automatic
        if held:
            reason = (
                f"held: {len(troubled)} hosts are failing at once ({', '.join(troubled)}), more than "
                f"{self.settings.ha_max_failed_hosts}; that looks like a network fault, so nothing is fenced "
                "or restarted automatically: fence each host by hand once it is known to be down"
            )
            log.error("ALERT %s", reason)
        elif automatic:
            reason = f"failed ({opinion.seen}): being fenced"
        else:
            reason = f"failed ({opinion.seen}): waiting for an operator to confirm that it is off"
        with self.db.session() as session:
            current = HostRepo(session).lock(host.name)
            if current.state is not HostState.SUSPECT:
                return None  # it answered meanwhile, or someone else acted
            current.set_state(HostState.FAILED, reason)
            HostRepo(session).save(current)
            self._mark_waiting(session, host.name, "it is not yet fenced")
            if held or not automatic:
                return None
            return self._record_fence(session, current, opinion.seen, confirmed_by=None)

    def _record_fence(self, session: Session, host: Host, seen: str, confirmed_by: str | None) -> Operation:
        if any(op.kind == FENCE for op in OperationRepo(session).list(target=host.name, statuses=UNFINISHED)):
            raise InvalidState(f"host {host.name} is being fenced already")
        params = {
            "detected_at": (host.suspect_since or utcnow()).isoformat(),
            "failed_at": utcnow().isoformat(),
            "seen": seen,
            "confirmed_by": confirmed_by,
        }
        return self.engine.record(session, FENCE, "host", host.name, params=params)

    def _mark_waiting(self, session: Session, host_name: str, why: str) -> None:
        """The VMs of a failed host say why they do not run; running ones are unknown now."""
        repo = VmRepo(session)
        for vm in repo.on_host(host_name):
            if vm.host != host_name:
                continue
            if vm.ha and vm.storage is not None:
                vm.unavailable = f"its host {host_name} failed; it starts elsewhere once the host is fenced ({why})"
            else:
                vm.unavailable = f"its disks are only on host {host_name}, which failed; it is back when that host is"
            if vm.active_operation_id is None and vm.power_state in (PowerState.RUNNING, PowerState.STARTING):
                vm.set_power(PowerState.UNKNOWN)
            repo.save(vm)

    def _note(self, host_name: str, state: HostState, reason: str) -> None:
        with self.db.session() as session:
            current = HostRepo(session).find(host_name)
            if current is not None and current.state is state:
                current.state_reason = reason
                HostRepo(session).save(current)

    # --- an operator's hand ------------------------------------------------------------------
    def fence(self, name: str, *, confirmed_by: str | None = None) -> Operation:
        """Fence a host now: by its agent (a held failure, a fence that failed), or, with
        ``confirmed_by``, on an operator's word that the machine is off."""
        with self.db.session() as session:
            hosts = HostRepo(session)
            host = hosts.lock(name)
            if host.state in (HostState.UP, HostState.MAINTENANCE):
                raise InvalidState(
                    f"host {name} is {host.state.value}: it answers its checks, so it is not off and is not fenced",
                    details={"host": name, "state": host.state.value},
                )
            if host.state is HostState.FENCED:
                raise InvalidState(f"host {name} is fenced already", details={"host": name, "state": "fenced"})
            agent = self.agent_of(host)
            if confirmed_by is None and (agent is None or not agent.automatic):
                raise InvalidState(
                    f"host {name} has {'no fence agent' if agent is None else 'manual fencing'}: only an "
                    "operator's confirmation that it is off can fence it",
                    details={"host": name, "fence_agent": host.fence_agent.value},
                )
            if host.state is not HostState.FAILED:
                host.set_state(HostState.FAILED, "failed: being fenced by hand")
                hosts.save(host)
                self._mark_waiting(session, name, "it is being fenced")
            seen = f"an operator ({confirmed_by}) confirmed it is off" if confirmed_by else "fenced by hand"
            operation = self._record_fence(session, host, seen, confirmed_by)
        return self.engine.launch(operation)

    # --- the fence -----------------------------------------------------------------------------
    def _fence_work(self, run: Run) -> dict[str, Any]:
        name = run.operation.target_name
        host = self.hosts.get(name)
        confirmed_by = run.params.get("confirmed_by")
        if confirmed_by:
            how = run.step(
                "confirmed", lambda: f"an operator ({confirmed_by}) confirmed that it is off", detail="by hand"
            )
        else:
            how = self._power_off(run, host)
        fenced = run.db_step("fenced", lambda s: self._fenced(s, name, how), detail=f"{name} is off: {how}")
        restarts: list[dict[str, Any]] = []
        for vm_id in fenced["restart"]:
            placed = run.db_step(f"place:{vm_id}", functools.partial(self._place, vm_id=vm_id, failed=name))
            if placed.get("operation"):
                self.engine.ensure_running(placed["operation"])
            restarts.append(placed)
        outcome = run.step("restarts", lambda: self._wait_for(restarts), detail="the VMs starting elsewhere")
        return {
            "detected_at": run.params["detected_at"],
            "failed_at": run.params["failed_at"],
            "fenced_at": fenced["at"],
            "fence": how,
            "restarted": outcome,
            "unavailable": fenced["unavailable"],
        }

    def _power_off(self, run: Run, host: Host) -> str:
        agent = self.agent_of(host)
        try:
            if agent is None or not agent.automatic:
                raise FenceFailed(f"host {host.name} has no agent that can power it off")
            done = run.step("power-off", agent.power_off, detail=f"powering {host.name} off ({agent.kind.value})")
            confirmed = run.step("confirm-off", agent.confirm_off, detail="confirming that it is off")
        except FenceFailed as err:
            self._note(
                host.name,
                HostState.FAILED,
                f"fence failed: {err.message}. Its VMs are not started elsewhere until it is known to be off: "
                "check the machine, then confirm by hand that it is off",
            )
            with self.db.session() as session:
                self._mark_waiting(session, host.name, f"its fence failed: {err.message}")
            raise
        return f"{done}; {confirmed}"

    def _fenced(self, session: Session, name: str, how: str) -> dict[str, Any]:
        """The host is off: record it fenced; which VMs restart (in order) and which wait."""
        hosts = HostRepo(session)
        host = hosts.lock(name)
        host.set_state(HostState.FENCED, f"fenced: {how}")
        hosts.save(host)
        repo = VmRepo(session)
        restart: list[Vm] = []
        unavailable: dict[str, str] = {}
        for vm in repo.on_host(name):
            if vm.host != name:
                continue
            if vm.ha and vm.storage is not None and vm.power_state in WAS_RUNNING:
                restart.append(vm)
                vm.unavailable = f"its host {name} is fenced; it is starting elsewhere"
            else:
                why = (
                    f"its disks are only on host {name}, which is fenced; it is back when that host is"
                    if vm.storage is None
                    else f"its host {name} is fenced and it is not restarted elsewhere (HA is off for it, or it "
                    "was not running); it is back when that host is"
                )
                vm.unavailable = why
                unavailable[vm.name] = why
            if vm.active_operation_id is None and vm.power_state in (PowerState.RUNNING, PowerState.STARTING):
                vm.set_power(PowerState.UNKNOWN)
            repo.save(vm)
        restart.sort(key=lambda v: (-v.ha_priority, v.name))
        return {"at": utcnow().isoformat(), "restart": [v.id for v in restart], "unavailable": unavailable}

    def _place(self, session: Session, vm_id: str, failed: str) -> dict[str, Any]:
        """Choose a host for one VM and record its restart there, holding the room (in priority
        order: a later VM cannot take the room of an earlier one)."""
        repo = VmRepo(session)
        vm = repo.by_id(vm_id)
        if vm is None or vm.host != failed:
            return {"vm": vm.name if vm else vm_id, "skipped": "it is no longer on the failed host"}
        if vm.active_operation_id is not None:
            vm.unavailable = f"its host {failed} is fenced, but operation {vm.active_operation_id} holds it"
            repo.save(vm)
            return {"vm": vm.name, "skipped": vm.unavailable}
        image = ImageRepo(session).get(vm.image)
        request = build_request(session, vm, image, excluded=frozenset({failed}))
        try:
            placement = choose(pool_snapshots(session), request)
        except CapacityError as err:
            vm.unavailable = f"its host {failed} is fenced and no other host can take it: {err.message}"
            repo.save(vm)
            return {"vm": vm.name, "skipped": vm.unavailable}
        vm.moving_to = placement.host.name
        params = {"vm_id": vm.id, "vm": vm.name, "from": failed, "to": placement.host.name}
        try:
            operation = self.engine.record(session, RESTART, "vm", vm.name, vm=vm, params=params)
        except Busy as err:
            return {"vm": vm.name, "skipped": err.message}
        return {"vm": vm.name, "to": placement.host.name, "operation": operation.id}

    def _wait_for(self, restarts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        deadline = self.settings.ready_timeout + 120
        outcome = []
        for placed in restarts:
            if not placed.get("operation"):
                outcome.append(placed)
                continue
            try:
                done = self.engine.wait(placed["operation"], deadline)
            except FlexvmError as err:
                outcome.append({**placed, "status": "unfinished", "error": err.message})
                continue
            entry = {**placed, "status": done.status.value, "at": (done.finished_at or utcnow()).isoformat()}
            if done.error:
                entry["error"] = done.error.get("message")
            if done.result.get("boot_seconds") is not None:
                entry["boot_seconds"] = done.result["boot_seconds"]
            outcome.append(entry)
        return outcome

    # --- one VM, started elsewhere -----------------------------------------------------------
    def _restart_work(self, run: Run) -> dict[str, Any]:
        vm = self.records.by_id(run.params["vm_id"])
        if vm is None:
            raise NotFound("VM", run.operation.target_name)
        failed, to = run.params["from"], run.params["to"]
        image = self.images.get(vm.image)
        dest = self.hosts.driver(to)
        host = self.hosts.get(to)
        run.step(
            "hold", lambda: {"at": time.time()}, undo=lambda _out: self._let_go(vm, to), detail=f"room held on {to}"
        )
        run.step("image", lambda: self.images.ensure_on_host(dest, image), detail=f"image '{image.name}' on {to}")

        def define() -> None:
            self.hosts.isolation.spread(vm, required=to)
            if dest.guest_info(vm.domain_name) is None:
                isolated = self.hosts.isolation.isolates(host)
                dest.define(guest_boot.guest_spec(vm, image, host.accelerator, host.bridge, isolated=isolated))

        run.step(
            "define",
            define,
            undo=lambda _out: remove_host_copy(dest, vm),  # its disks are shared: only the definition goes
            undo_if_failed=True,
            detail=f"defining it on {to}, from its disks on shared storage",
        )
        run.db_step("switch", lambda s: self._switch(s, vm, failed, to, run.id), detail=f"the record now says {to}")
        run.pivot("moved", f"{vm.name} lives on {to}")
        booted = self.booter.boot(run, dest, self.records.get(vm.name), image, creating=False)
        return {"from": failed, "to": to, **booted}

    def _let_go(self, vm: Vm, to: str) -> None:
        def apply(v: Vm) -> None:
            v.moving_to = None
            v.unavailable = f"its restart on {to} failed; it waits for its host"

        self.records.change(vm.id, apply)

    @staticmethod
    def _switch(session: Session, vm: Vm, failed: str, to: str, operation_id: str) -> None:
        def apply(v: Vm) -> None:
            v.host = v.disk_host = to
            v.moving_to = None
            v.unavailable = None
            v.set_power(PowerState.STARTING, operation_id)

        change_in(session, vm.id, apply)
        # The fenced host still has the guest's definition: removed when it answers again.
        LeftoverRepo(session).add(failed, "domain", vm.domain_name, f"VM {vm.name} restarted on {to}")

    # --- a host that comes back ----------------------------------------------------------------
    def restore(self, host_name: str) -> list[str]:
        """A failed or fenced host answers again: its VMs that waited for it are available again,
        and those that ran before it failed are started. Returns the VMs started."""
        with self.db.session() as session:
            waiting = [vm for vm in VmRepo(session).on_host(host_name) if vm.host == host_name and vm.unavailable]
        driver = self.hosts.driver(host_name)
        started = []
        for vm in waiting:
            try:
                running = runs(driver, vm)
            except FlexvmError as err:
                log.warning("host %s is back, but %s cannot be read yet: %s", host_name, vm.name, err.message)
                continue

            def apply(v: Vm, running: bool = running) -> None:
                v.unavailable = None
                if v.active_operation_id is None and v.power_state is PowerState.UNKNOWN:
                    v.set_power(PowerState.RUNNING if running else PowerState.STOPPED)

            self.records.change(vm.id, apply)
            if not running and vm.power_state in WAS_RUNNING and self.start_vm is not None:
                try:
                    self.start_vm(vm.name)
                    started.append(vm.name)
                except FlexvmError as err:
                    log.warning("host %s is back, but %s could not be started: %s", host_name, vm.name, err.message)
        return started

    # --- the story, for `host show` -------------------------------------------------------------
    def last_fence(self, host_name: str) -> Operation | None:
        with self.db.session() as session:
            fences = [op for op in OperationRepo(session).list(target=host_name, limit=20) if op.kind == FENCE]
        return fences[0] if fences else None


def _missed_for(host: Host, now: datetime) -> float:
    return 0.0 if host.suspect_since is None else (now - host.suspect_since).total_seconds()
