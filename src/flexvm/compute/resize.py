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

from flexvm.capacity.fit import Allocation, room_on, why_not
from flexvm.compute import guest_boot
from flexvm.compute.lifecycle import VmService
from flexvm.compute.moving import MovePlan, VmMover, estimate
from flexvm.compute.operations import OperationContext
from flexvm.compute.placing import build_request, pool_snapshots
from flexvm.errors import CapacityError, Conflict, FlexvmError, InvalidInput, InvalidState, Option, Remedy
from flexvm.model.host import Accelerator
from flexvm.model.image import Image
from flexvm.model.operation import Operation
from flexvm.model.sizes import Size
from flexvm.model.units import MIB, format_bytes
from flexvm.model.vm import PowerState, Vm
from flexvm.scheduler.placement import choose
from flexvm.store.repositories import HostRepo, ImageRepo, VmRepo

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
    def __init__(self, vms: VmService, mover: VmMover) -> None:
        self.vms = vms
        self.mover = mover
        self.db = vms.db

    # --- planning ------------------------------------------------------------------------
    def plan(self, name: str, size_name: str, *, allow_restart: bool = False, force: bool = False) -> ResizePlan:
        vm = self.vms.get(name)
        target = self._target(vm, size_name)
        ceiling = self.vms.sizes.ceiling_for(target)
        with self.db.session() as session:
            image = ImageRepo(session).get(vm.image)
            return self._plan(session, vm, image, target, ceiling, allow_restart=allow_restart, force=force)

    def _target(self, vm: Vm, size_name: str) -> Size:
        target = self.vms.sizes.get(size_name)
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
        driver = self.vms.hosts.drivers.for_uri(HostRepo(session).get(vm.host).uri)
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
        target = self._target(self.vms.get(name), size_name)
        ceiling = self.vms.sizes.ceiling_for(target)
        with self.db.session() as session:
            vm = VmRepo(session).get(name)
            self.vms.check_usable(vm)
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
            operation = self.vms.runner.record(
                session,
                "vm.resize",
                "vm",
                name,
                vm=vm,
                params={
                    "from": plan.current,
                    "to": plan.target,
                    "path": plan.path,
                    "destination": plan.destination,
                    "from_vcpus": before.vcpus,
                    "from_memory_mib": before.memory_mib,
                },
            )
        before.active_operation_id = operation.id
        return self.vms.runner.launch(operation, lambda ctx: self._run(ctx, before, image, target, plan))

    def _run(self, ctx: OperationContext, vm: Vm, image: Image, target: Size, plan: ResizePlan) -> dict[str, Any]:
        result: dict[str, Any] = {"path": plan.path, "steps": plan.steps, "warnings": plan.warnings}
        original = (vm.size, vm.vcpus, vm.memory_mib, vm.max_size, vm.max_vcpus, vm.max_memory_mib)
        try:
            if plan.path == "move-then-hot":
                assert plan.destination is not None
                move = MovePlan(vm.name, vm.host, plan.destination, "live", 0.0)
                result["move"] = self.mover.move(ctx, self._as_recorded(vm, original), image, move)
                vm = self.vms.get(vm.name)
            if plan.path in ("hot", "move-then-hot"):
                result.update(self._hot(ctx, vm, image, target, original))
            elif plan.path == "restart":
                result.update(self._restart(ctx, vm, image, target, plan, original))
            else:
                result.update(self._offline(ctx, vm, image, target, plan, original))
        except BaseException:
            self._restore(vm, original)
            raise
        return result

    def _restore(self, vm: Vm, original: tuple[Any, ...]) -> None:
        """A resize that failed: the record says the shape the guest really has (a vCPU plugged
        before a DIMM failed stays counted), where it really runs, and nothing is held elsewhere."""
        current = self.vms.get(vm.name)
        size, vcpus, memory, max_size, max_vcpus, max_memory = original
        host = current.host
        info = None
        if host is not None:
            driver = self.vms.hosts.driver(host)
            try:
                info = driver.guest_info(vm.domain_name)
            except FlexvmError:
                info = None
            self.vms.resync(driver, current)
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

        self.vms.change_record(vm.id, apply)

    @staticmethod
    def _as_recorded(vm: Vm, original: tuple[Any, ...]) -> Vm:
        return dataclasses.replace(vm, size=original[0], vcpus=original[1], memory_mib=original[2])

    def _hot(
        self, ctx: OperationContext, vm: Vm, image: Image, target: Size, original: tuple[Any, ...]
    ) -> dict[str, Any]:
        assert vm.host is not None
        driver = self.vms.hosts.driver(vm.host)
        vcpus_before, memory_before = original[1], original[2]
        console_before = len(self.vms.console(vm.name).text)
        plugged = False
        if target.vcpus != vcpus_before:
            with ctx.step("vcpus", f"{vcpus_before} -> {target.vcpus} vCPUs"):
                driver.set_vcpus(vm.domain_name, target.vcpus)
        if target.memory_mib != memory_before:
            with ctx.step("memory", f"{_mib(memory_before)} -> {_mib(target.memory_mib)}"):
                plugged = self._set_memory(driver, vm, target.memory_mib)

        def apply(v: Vm) -> None:
            v.size, v.vcpus, v.memory_mib = target.name, target.vcpus, target.memory_mib

        self.vms.change_record(vm.id, apply)
        expect_cpus = target.vcpus if target.vcpus != vcpus_before else None
        confirmed = self._guest_confirms(vm, image, console_before, expect_cpus, plugged)
        return {"guest_confirmed": confirmed, "restarted": False, "dimm_plugged": plugged}

    def _set_memory(self, driver: Any, vm: Vm, target_mib: int) -> bool:
        """Grow by a DIMM where the plugged memory is short, then let the balloon settle the rest.
        True if a DIMM was plugged."""
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

    def _guest_confirms(self, vm: Vm, image: Image, offset: int, cpus: int | None, plugged: bool) -> bool | None:
        """Wait (briefly) for a guest that reports its shape (the tiny image's console protocol)
        to show what was plugged: the new vCPU count, more memory. None when there is nothing it
        would show (a balloon change) or it does not report at all."""
        if image.ready_marker != "flexvm: ready" or (cpus is None and not plugged):
            return None
        deadline = time.monotonic() + GUEST_CONFIRM_SECONDS
        while time.monotonic() < deadline:
            text = self.vms.console(vm.name).text[offset:]
            states = [guest_boot.parse_fields(line) for line in text.splitlines() if "flexvm: state" in line]
            if states and (cpus is None or states[-1].get("cpus") == str(cpus)):
                return True
            time.sleep(0.5)
        return False

    def _restart(
        self, ctx: OperationContext, vm: Vm, image: Image, target: Size, plan: ResizePlan, original: tuple[Any, ...]
    ) -> dict[str, Any]:
        assert vm.host is not None
        driver = self.vms.hosts.driver(vm.host)
        self.vms.update_record(vm.id, power_state=PowerState.STOPPING)
        self.vms.power_off(ctx, driver, vm, force=False)
        self.vms.update_record(vm.id, power_state=PowerState.STOPPED)
        if plan.destination is not None:
            stopped = dataclasses.replace(
                self._as_recorded(self.vms.get(vm.name), original), power_state=PowerState.STOPPED
            )
            self.mover.move(ctx, stopped, image, MovePlan(vm.name, vm.host, plan.destination, "cold", 0.0))
            driver = self.vms.hosts.driver(plan.destination)
        resized = self._record_new_size(vm, target)
        host = self.vms.hosts.get(resized.host or "")
        with ctx.step("redefine", f"at {target.name} with ceilings {resized.max_size}"):
            driver.undefine(vm.domain_name)
            driver.define(guest_boot.guest_spec(resized, image, host.accelerator, host.bridge))
        offset = guest_boot.console_length(driver, vm.console_log)
        self.vms.update_record(vm.id, power_state=PowerState.STARTING)
        with ctx.step("start", "powering on at the new size"):
            started = time.monotonic()
            driver.start(vm.domain_name)
        booted = self.vms.finish_boot(
            ctx, driver, resized, image, console_offset=offset, started=started, creating=False
        )
        return {"restarted": True, **booted}

    def _offline(
        self, ctx: OperationContext, vm: Vm, image: Image, target: Size, plan: ResizePlan, original: tuple[Any, ...]
    ) -> dict[str, Any]:
        if plan.destination is not None:
            stopped = self._as_recorded(vm, original)
            self.mover.move(ctx, stopped, image, MovePlan(vm.name, vm.host, plan.destination, "cold", 0.0))
        resized = self._record_new_size(vm, target)
        if resized.power_state is PowerState.STOPPED and resized.host is not None:
            driver = self.vms.hosts.driver(resized.host)
            host = self.vms.hosts.get(resized.host)
            with ctx.step("redefine", f"at {target.name}"):
                driver.undefine(vm.domain_name)
                driver.define(guest_boot.guest_spec(resized, image, host.accelerator, host.bridge))
        return {"restarted": False}

    def _record_new_size(self, vm: Vm, target: Size) -> Vm:
        ceiling = self.vms.sizes.ceiling_for(target)

        def apply(v: Vm) -> None:
            v.size, v.vcpus, v.memory_mib = target.name, target.vcpus, target.memory_mib
            v.max_size, v.max_vcpus, v.max_memory_mib = ceiling.name, ceiling.vcpus, ceiling.memory_mib

        self.vms.change_record(vm.id, apply)
        return self.vms.get(vm.name)
