"""Resizing a VM by the least disruptive path, chosen here and reported before anything happens.

- hot: the new size is within the VM's ceilings and its host has room: vCPUs are plugged or
  unplugged, memory grows by a DIMM and shrinks through the balloon, the guest keeps running;
- move then hot: within the ceilings, but the host has no room: live-migrate to a host that has,
  then hot;
- restart (only with --allow-restart): beyond the ceilings: stop, redefine at the new size (with
  new ceilings), start, on another host if this one has no room;
- record: a stopped or deallocated VM just changes its definition (a stopped one moves if its
  host has no room), and runs at the new size when next started.

A memory shrink never takes memory the guest is using without saying so: the balloon's view is
checked first, and such a shrink is refused unless forced.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from flexvm.access.quotas import admit_vm
from flexvm.capacity.fit import Allocation, room_on, why_not
from flexvm.compute import guest_boot
from flexvm.compute.booting import Booter
from flexvm.compute.hosts import HostService
from flexvm.compute.images import ImageService
from flexvm.compute.moving import MovePlan, VmMover, estimate
from flexvm.compute.placing import build_request, pool_snapshots
from flexvm.compute.sizes import SizeService
from flexvm.compute.vm_records import VmRecords, change_in, check_usable, power_state_of, power_step
from flexvm.errors import CapacityError, Conflict, FlexvmError, InvalidInput, InvalidState, NotFound, Option, Remedy
from flexvm.model.access import Quotas
from flexvm.model.guest import GuestInfo, GuestSpec
from flexvm.model.host import Accelerator
from flexvm.model.image import Image
from flexvm.model.operation import Operation
from flexvm.model.sizes import Size
from flexvm.model.units import MIB, format_bytes
from flexvm.model.vm import PowerState, Vm
from flexvm.operations.engine import Engine
from flexvm.operations.run import Run
from flexvm.scheduler.placement import choose
from flexvm.store.db import Database
from flexvm.store.repositories import HostRepo, ImageRepo, VmRepo

KIND = "vm.resize"
DIMM_STEP_MIB = 128  # Linux onlines memory in 128 MiB blocks on x86_64
GUEST_CONFIRM_SECONDS = 20.0


@dataclass
class ResizePlan:
    vm: str
    current: str
    target: str
    path: str  # "hot", "move-then-hot", "restart", "record"
    host: str | None
    destination: str | None = None
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    estimate_seconds: float = 0.0


def _mib(value: int) -> str:
    return format_bytes(value * MIB)


class ResizeService:
    def __init__(
        self,
        db: Database,
        engine: Engine,
        hosts: HostService,
        sizes: SizeService,
        images: ImageService,
        records: VmRecords,
        booter: Booter,
        mover: VmMover,
    ) -> None:
        self.engine = engine
        self.hosts = hosts
        self.sizes = sizes
        self.images = images
        self.records = records
        self.booter = booter
        engine.register(KIND, self._work)
        self.mover = mover
        self.db = db

    # --- planning ------------------------------------------------------------------------
    def plan(self, name: str, size_name: str, *, allow_restart: bool = False, force: bool = False) -> ResizePlan:
        vm = self.records.get(name)
        target = self._target(vm, size_name)
        ceiling = self.sizes.ceiling_for(target)
        with self.db.session() as session:
            image = ImageRepo(session).get(vm.image)
            return self._plan(session, vm, image, target, ceiling, allow_restart=allow_restart, force=force)

    def _target(self, vm: Vm, size_name: str) -> Size:
        target = self.sizes.get(size_name)
        if target.name == vm.size:
            raise InvalidInput("size", f"VM '{vm.name}' is already {vm.size}")
        return target

    def _plan(
        self, session: Any, vm: Vm, image: Image, target: Size, ceiling: Size, *, allow_restart: bool, force: bool
    ) -> ResizePlan:
        resized = dataclasses.replace(vm, vcpus=target.vcpus, memory_mib=target.memory_mib)
        snapshots = pool_snapshots(session, lock=False)
        # Before anything else: some host must be able to hold the new size at all.
        try:
            choose(snapshots, build_request(session, resized, image))
        except CapacityError as err:
            if not self._fits_current_host(session, vm, target):
                raise CapacityError(
                    f"no host can hold VM '{vm.name}' at {target.name} ({target.describe()}): {err.message}",
                    details=err.details,
                ) from err
        plan = ResizePlan(vm.name, vm.size, target.name, "hot", vm.host or vm.disk_host)
        if vm.power_state in (PowerState.STOPPED, PowerState.DEALLOCATED):
            return self._plan_offline(session, vm, image, target, plan)
        if vm.power_state is not PowerState.RUNNING:
            raise InvalidState(
                f"VM '{vm.name}' is {vm.power_state.value}; resize it once it is running, stopped or deallocated"
            )
        within = self._within_ceilings(vm, target, HostRepo(session).get(vm.host or "").accelerator)
        if within is not None:
            if not allow_restart:
                raise InvalidState(
                    f"{target.name} is beyond VM '{vm.name}''s ceilings ({within}); resizing it needs a restart",
                    details={"ceilings": within},
                    remedy=Remedy(option=Option.ALLOW_RESTART),
                )
            return self._plan_restart(session, vm, image, target, ceiling, plan)
        if target.memory_mib < vm.memory_mib:
            self._check_shrink(session, vm, target, force, plan)
        if self._fits_current_host(session, vm, target):
            plan.steps = self._hot_steps(vm, target)
            plan.estimate_seconds = 2.0
            return plan
        move = self._move_for(session, resized, image, vm)
        plan.path, plan.destination = "move-then-hot", move.destination
        plan.steps = [
            f"live-migrate to {move.destination} (room there for {target.name}; {plan.host} has none)"
        ] + self._hot_steps(vm, target)
        plan.estimate_seconds = move.estimate_seconds + 2.0
        return plan

    def _plan_offline(self, session: Any, vm: Vm, image: Image, target: Size, plan: ResizePlan) -> ResizePlan:
        plan.path = "record"
        if vm.power_state is PowerState.DEALLOCATED:
            plan.steps = [f"record {target.name}; the VM claims it when started"]
            return plan
        if self._fits_current_host(session, vm, target):
            plan.steps = [f"redefine at {target.name} on {plan.host}; it stays stopped"]
            return plan
        resized = dataclasses.replace(vm, vcpus=target.vcpus, memory_mib=target.memory_mib)
        move = self._move_for(session, resized, image, vm, live=False)
        plan.destination = move.destination
        plan.steps = [
            f"move its disk to {move.destination} ({plan.host} has no room for {target.name})",
            f"redefine at {target.name} there; it stays stopped",
        ]
        plan.estimate_seconds = move.estimate_seconds
        return plan

    def _plan_restart(
        self, session: Any, vm: Vm, image: Image, target: Size, ceiling: Size, plan: ResizePlan
    ) -> ResizePlan:
        plan.path = "restart"
        plan.steps = ["stop the guest (ACPI, then forced after the timeout)"]
        if not self._fits_current_host(session, vm, target):
            resized = dataclasses.replace(vm, vcpus=target.vcpus, memory_mib=target.memory_mib)
            move = self._move_for(session, resized, image, vm, live=False)
            plan.destination = move.destination
            plan.steps.append(f"move its disk to {move.destination} ({plan.host} has no room for {target.name})")
        plan.steps += [f"redefine at {target.name} with new ceilings ({ceiling.name})", "start and wait until ready"]
        plan.warnings.append("the guest restarts: its uptime starts again")
        plan.estimate_seconds = 10.0 + estimate(vm, "cold")
        return plan

    def _hot_steps(self, vm: Vm, target: Size) -> list[str]:
        steps = []
        if target.vcpus != vm.vcpus:
            verb = "hot-plug" if target.vcpus > vm.vcpus else "unplug"
            steps.append(f"{verb} vCPUs: {vm.vcpus} -> {target.vcpus}")
        if target.memory_mib > vm.memory_mib:
            steps.append(
                f"grow memory {_mib(vm.memory_mib)} -> {_mib(target.memory_mib)} (DIMM hot-plug and/or balloon)"
            )
        elif target.memory_mib < vm.memory_mib:
            steps.append(f"shrink memory {_mib(vm.memory_mib)} -> {_mib(target.memory_mib)} through the balloon")
        return steps

    @staticmethod
    def _within_ceilings(vm: Vm, target: Size, accelerator: Accelerator) -> str | None:
        """None if a running VM can take ``target`` without a restart, else what stands in the way."""
        if target.vcpus < vm.vcpus and accelerator is Accelerator.TCG:
            # QEMU 7.2 under TCG ejects the vCPU but never reports it gone; libvirt then keeps it,
            # and the next plug crashes QEMU. So fewer vCPUs means a restart on TCG hosts.
            return "vCPUs cannot be unplugged from a running guest under TCG"
        if vm.max_vcpus is None or vm.max_memory_mib is None:
            return "it has no ceilings (made before flexvm set them)"
        if target.vcpus > vm.max_vcpus or target.memory_mib > vm.max_memory_mib:
            return (
                f"at most {vm.max_vcpus} vCPUs and {_mib(vm.max_memory_mib)} memory without a restart ({vm.max_size})"
            )
        grow = target.memory_mib - vm.memory_mib
        if grow > 0 and grow % DIMM_STEP_MIB and target.memory_mib % DIMM_STEP_MIB:
            return f"memory changes while running in steps of {DIMM_STEP_MIB} MiB"
        return None

    def _check_shrink(self, session: Any, vm: Vm, target: Size, force: bool, plan: ResizePlan) -> None:
        assert vm.host is not None
        driver = self.hosts.drivers.for_uri(HostRepo(session).get(vm.host).uri)
        try:
            stats = driver.memory_stats(vm.domain_name)
        except FlexvmError:
            stats = None
        used = stats.used_kib if stats is not None else None
        if used is None:
            plan.warnings.append("the guest does not report its memory use; the balloon will take what it can")
            return
        if used > target.memory_mib * 1024 * 0.9:
            message = (
                f"the guest is using {format_bytes(used * 1024)} of memory; {target.name} would leave it "
                f"{_mib(target.memory_mib)}"
            )
            if not force:
                raise Conflict(
                    f"{message}: that would take memory in use. Free memory in the guest first, or force it",
                    details={"used_kib": used, "target_mib": target.memory_mib},
                    remedy=Remedy(option=Option.FORCE),
                )
            plan.warnings.append(f"{message} (forced)")

    def _fits_current_host(self, session: Any, vm: Vm, target: Size) -> bool:
        host_name = vm.host or vm.disk_host
        if host_name is None:
            return False
        host = HostRepo(session).get(host_name)
        room = room_on(host, Allocation(*VmRepo(session).allocated_on(host_name)))
        extra_vcpus = target.vcpus - vm.vcpus if vm.host else 0
        extra_memory = target.memory_mib - vm.memory_mib if vm.host else 0
        return why_not(room, max(extra_vcpus, 0), max(extra_memory, 0), 0) is None

    def _move_for(self, session: Any, resized: Vm, image: Image, vm: Vm, *, live: bool = True) -> MovePlan:
        """Where the resized VM would fit, other than its current host."""
        source = vm.host or vm.disk_host or ""
        placement = choose(
            pool_snapshots(session, lock=False), build_request(session, resized, image, excluded=frozenset({source}))
        )
        mode = "live" if live and vm.power_state is PowerState.RUNNING else "cold"
        return MovePlan(vm.name, source, placement.host.name, mode, estimate(vm, mode), placement.rejected)

    # --- doing ---------------------------------------------------------------------------
    def resize(self, name: str, size_name: str, *, allow_restart: bool = False, force: bool = False) -> Operation:
        target = self._target(self.records.get(name), size_name)
        ceiling = self.sizes.ceiling_for(target)
        with self.db.session() as session:
            vm = VmRepo(session).get(name)
            check_usable(vm)
            if vm.host is not None:  # the quota first: it needs no host to say no
                grows = Quotas(vcpus=target.vcpus - vm.vcpus, memory_mib=target.memory_mib - vm.memory_mib)
                admit_vm(session, name, grows)
            image = ImageRepo(session).get(vm.image)
            plan = self._plan(session, vm, image, target, ceiling, allow_restart=allow_restart, force=force)
            before = dataclasses.replace(vm)
            if plan.destination is not None:
                HostRepo(session).lock(plan.destination)
                vm.moving_to = plan.destination
            if vm.host is not None:
                # Claim the new size now: where it runs and, while it moves, where it goes (the
                # source is held at the new size too until the move ends: briefly cautious, never short).
                vm.vcpus, vm.memory_mib = target.vcpus, target.memory_mib
            operation = self.engine.record(
                session,
                KIND,
                "vm",
                name,
                vm=vm,
                params={
                    "vm_id": vm.id,
                    "from": plan.current,
                    "to": plan.target,
                    "path": plan.path,
                    "destination": plan.destination,
                    "source": before.host or before.disk_host,  # a resumed run may find it moved
                    "plan_steps": plan.steps,
                    "warnings": plan.warnings,
                    "from_vcpus": before.vcpus,
                    "from_memory_mib": before.memory_mib,
                    "original": [
                        before.size,
                        before.vcpus,
                        before.memory_mib,
                        before.max_size,
                        before.max_vcpus,
                        before.max_memory_mib,
                    ],
                },
            )
        return self.engine.launch(operation)

    def _work(self, run: Run) -> dict[str, Any]:
        p = run.params
        found = self.records.by_id(p["vm_id"])
        if found is None:
            raise NotFound("VM", run.operation.target_name)
        original = tuple(p["original"])
        vm = self._as_recorded(found, original)
        before = vm
        image = self.images.get(vm.image)
        target = self.sizes.get(p["to"])
        path, destination = p["path"], p.get("destination")
        result: dict[str, Any] = {"path": path, "steps": p.get("plan_steps", []), "warnings": p.get("warnings", [])}
        run.step(
            "claim",
            lambda: {"to": target.name},
            undo=lambda _out: self._restore(run, before, original),
            detail=f"{target.name} claimed on the VM's host",
        )
        # Where the VM was when asked (the record says the destination once a move switched).
        source = p.get("source", vm.host if vm.host is not None else vm.disk_host)
        if path == "move-then-hot":
            assert destination is not None
            move = MovePlan(vm.name, source, destination, "live", 0.0)
            result["move"] = self.mover.move(run, vm, image, move)
            vm = self._as_recorded(self.records.get(vm.name), original)
        if path in ("hot", "move-then-hot"):
            result.update(self._hot(run, vm, image, target, original))
        elif path == "restart":
            result.update(self._restart(run, vm, image, target, source, destination))
        else:
            result.update(self._offline(run, vm, image, target, source, destination))
        return result

    def _restore(self, run: Run, vm: Vm, original: tuple[Any, ...]) -> None:
        """A resize that failed: the record says the shape the guest really has (a vCPU plugged
        before a DIMM failed stays counted), where it really runs, and nothing is held elsewhere."""
        current = self.records.get(vm.name)
        size, vcpus, memory, max_size, max_vcpus, max_memory = original
        info = None
        observed = None
        if current.host is not None:
            driver = self.hosts.driver(current.host)
            try:
                info = driver.guest_info(vm.domain_name)
                observed = power_state_of(info.state if info else None)
            except FlexvmError:
                info, observed = None, PowerState.UNKNOWN
        live_vcpus = info.vcpus if info is not None and info.vcpus else vcpus
        live_memory = info.memory_kib // 1024 if info is not None and info.memory_kib else memory
        error = None
        if (live_vcpus, live_memory) != (vcpus, memory):
            error = (
                f"a resize from {size} failed part way: the guest has {live_vcpus} vCPUs and "
                f"{live_memory} MiB; resize it again to settle it"
            )

        def apply(v: Vm) -> None:
            v.size, v.vcpus, v.memory_mib = size, live_vcpus, live_memory
            v.max_size, v.max_vcpus, v.max_memory_mib = max_size, max_vcpus, max_memory
            v.moving_to = None
            v.error = error
            if observed is not None:
                v.set_power(observed, run.id)

        self.records.change(vm.id, apply)

    @staticmethod
    def _as_recorded(vm: Vm, original: tuple[Any, ...]) -> Vm:
        """The VM with the shape it had before the request claimed the new one."""
        return dataclasses.replace(vm, size=original[0], vcpus=original[1], memory_mib=original[2])

    def _hot(self, run: Run, vm: Vm, image: Image, target: Size, original: tuple[Any, ...]) -> dict[str, Any]:
        assert vm.host is not None
        driver = self.hosts.driver(vm.host)
        vcpus_before, memory_before = original[1], original[2]
        console_before = run.step("console", lambda: guest_boot.console_length(driver, vm))
        plugged = False
        if target.vcpus != vcpus_before:

            def vcpus() -> None:
                info = driver.guest_info(vm.domain_name)
                if info is None or info.vcpus != target.vcpus:  # a re-run finds them plugged
                    driver.set_vcpus(vm.domain_name, target.vcpus)

            run.step("vcpus", vcpus, detail=f"{vcpus_before} -> {target.vcpus} vCPUs")
        if target.memory_mib != memory_before:
            plugged = bool(
                run.step(
                    "memory",
                    lambda: self._set_memory(driver, vm, target.memory_mib),
                    detail=f"{_mib(memory_before)} -> {_mib(target.memory_mib)}",
                )
            )

        def record(session: Session) -> None:
            def apply(v: Vm) -> None:
                v.size, v.vcpus, v.memory_mib = target.name, target.vcpus, target.memory_mib

            change_in(session, vm.id, apply)

        run.db_step("resized", record, detail=f"recording {target.name}")
        run.pivot("done", "the guest has its new size")
        expect_cpus = target.vcpus if target.vcpus != vcpus_before else None
        confirmed = run.step(
            "confirm",
            lambda: self._guest_confirms(driver, vm, image, console_before, expect_cpus, plugged),
            detail="waiting for the guest to show what was plugged",
        )
        return {"guest_confirmed": confirmed, "restarted": False, "dimm_plugged": plugged}

    def _set_memory(self, driver: Any, vm: Vm, target_mib: int) -> bool:
        """Grow by a DIMM where the plugged memory is short, then let the balloon settle the rest.
        True if a DIMM was plugged (a re-run after a crash finds it plugged and plugs none)."""
        info = driver.guest_info(vm.domain_name)
        plugged = (info.plugged_memory_kib or info.memory_kib) // 1024 if info else vm.memory_mib
        added = False
        if target_mib > plugged:
            grow = -(-(target_mib - plugged) // DIMM_STEP_MIB) * DIMM_STEP_MIB  # whole 128 MiB blocks
            driver.attach_memory(vm.domain_name, grow)
            plugged += grow
            added = True
        driver.set_memory_target(vm.domain_name, min(target_mib, plugged))
        return added

    def _guest_confirms(
        self, driver: Any, vm: Vm, image: Image, offset: int, cpus: int | None, plugged: bool
    ) -> bool | None:
        """Wait (briefly) for a guest that reports its shape (the tiny image's console protocol)
        to show what was plugged: the new vCPU count, more memory. None when there is nothing it
        would show (a balloon change) or it does not report at all."""
        if image.ready_marker != "flexvm: ready" or (cpus is None and not plugged):
            return None
        deadline = time.monotonic() + GUEST_CONFIRM_SECONDS
        while time.monotonic() < deadline:
            text = driver.console_read(vm.console_log, offset, store=vm.storage).decode(errors="replace")
            states = [guest_boot.parse_fields(line) for line in text.splitlines() if "flexvm: state" in line]
            if states and (cpus is None or states[-1].get("cpus") == str(cpus)):
                return True
            time.sleep(0.5)
        return False

    def _restart(
        self, run: Run, vm: Vm, image: Image, target: Size, source: str | None, destination: str | None
    ) -> dict[str, Any]:
        assert source is not None
        driver = self.hosts.driver(source)
        power_step(run, "stopping", vm.id, PowerState.STOPPING)
        self.booter.power_off(run, driver, vm, force=False)
        power_step(run, "stopped", vm.id, PowerState.STOPPED)
        if destination is not None:
            stopped = dataclasses.replace(vm, power_state=PowerState.STOPPED)
            self.mover.move(run, stopped, image, MovePlan(vm.name, source, destination, "cold", 0.0))
            driver = self.hosts.driver(destination)
        resized = self._record_new_size(run, vm, target)
        self._redefine(run, driver, resized, image, f"at {target.name} with ceilings {resized.max_size}")
        power_step(run, "starting", vm.id, PowerState.STARTING)
        booted = self.booter.boot(run, driver, resized, image, creating=False)
        return {"restarted": True, **booted}

    def _offline(
        self, run: Run, vm: Vm, image: Image, target: Size, source: str | None, destination: str | None
    ) -> dict[str, Any]:
        if destination is not None:
            self.mover.move(run, vm, image, MovePlan(vm.name, source, destination, "cold", 0.0))
        resized = self._record_new_size(run, vm, target)
        if resized.power_state is PowerState.STOPPED and resized.host is not None:
            driver = self.hosts.driver(resized.host)
            self._redefine(run, driver, resized, image, f"at {target.name}")
        return {"restarted": False}

    def _redefine(self, run: Run, driver: Any, resized: Vm, image: Image, detail: str) -> None:
        assert resized.host is not None
        host = self.hosts.get(resized.host)

        def redefine() -> None:
            self.hosts.isolation.spread(resized, required=host.name)
            isolated = self.hosts.isolation.isolates(host)
            spec = guest_boot.guest_spec(resized, image, host.accelerator, host.bridge, isolated=isolated)
            if _defined_as(driver.guest_info(resized.domain_name), spec):
                return  # a re-run after a crash: the first attempt redefined it already
            driver.undefine(resized.domain_name)
            driver.define(spec)

        run.step("redefine", redefine, detail=detail)

    def _record_new_size(self, run: Run, vm: Vm, target: Size) -> Vm:
        ceiling = self.sizes.ceiling_for(target)

        def record(session: Session) -> None:
            def apply(v: Vm) -> None:
                v.size, v.vcpus, v.memory_mib = target.name, target.vcpus, target.memory_mib
                v.max_size, v.max_vcpus, v.max_memory_mib = ceiling.name, ceiling.vcpus, ceiling.memory_mib

            change_in(session, vm.id, apply)

        run.db_step("new-size", record, detail=f"recording {target.name} and its ceilings")
        return self.records.get(vm.name)


def _defined_as(info: GuestInfo | None, spec: GuestSpec) -> bool:
    """Whether the host's definition of the guest already has the shape of ``spec``."""
    if info is None:
        return False
    ceiling_mib = spec.max_memory_mib or spec.memory_mib
    return (info.vcpus, info.max_vcpus, info.memory_kib, info.max_memory_kib) == (
        spec.vcpus,
        spec.max_vcpus or spec.vcpus,
        spec.memory_mib * 1024,
        ceiling_mib * 1024,
    )
