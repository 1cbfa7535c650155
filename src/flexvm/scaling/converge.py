"""Bring a scale set's instances to its record: as many as its capacity, all of its current model,
each serving behind the load balancer — replacing the ones that fail to come up.

Growing: reserve names, create the VMs (each its own vm.create operation, in parallel), wait for
them to boot, probe each on its backend port, and only then add it to the load balancer. Shrinking:
mark the victims leaving, drain them in the load balancer (no new requests; the ones in flight
finish), reload it without them, then delete the VMs — so scaling in never fails a request.
A rolling model update is growing by a batch of new-model instances, then shrinking the old.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

from flexvm.compute.vms import VmService
from flexvm.errors import Busy, FlexvmError, NotFound, OperationFailed
from flexvm.model.operation import OperationStatus
from flexvm.model.scaleset import Instance, InstanceState, ScaleSet
from flexvm.model.vm import ProvisioningState, Vm
from flexvm.operations.engine import Engine
from flexvm.operations.run import Run
from flexvm.scaling.victims import Candidate, choose_victims
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import AvailabilitySetRepo, HostRepo, VmRepo
from flexvm.store.scaling import ScaleSetRepo

log = logging.getLogger(__name__)

BASE_ROUNDS = 20  # a bound on one converge (plus 3 per instance): each round grows, shrinks or replaces
MAX_FAILED_ROUNDS = 3  # rounds in a row in which no instance came up: give up and say why
DRAIN_TIMEOUT = 30.0  # seconds an instance's requests in flight get to finish before it is deleted
PROBE_INTERVAL = 0.5
LB_UP_TIMEOUT = 30.0  # HAProxy needs two passing checks (about 1 s) after flexvm's own probe passed


class Balancer(Protocol):
    """What converging needs from the load balancer (scaling/balancer.py; a recorder in unit tests)."""

    def sync(self) -> None:
        """Make the load balancer serve exactly the sets' serving instances."""

    def drain(self, scale_set: str, vm_name: str, timeout: float) -> bool:
        """Stop sending new requests to one instance; wait until those in flight are done."""

    def statuses(self, scale_set: str) -> dict[str, str]:
        """Each backend's state as the load balancer sees it (UP, DOWN, DRAIN...)."""

    def wait_up(self, scale_set: str, vm_name: str, timeout: float) -> bool:
        """Wait until the load balancer's own health checks have put the instance in rotation."""


Prober = Callable[[str, int, str], bool]  # (address, port, path) -> answered 200


@dataclass
class SetView:
    scale_set: ScaleSet
    instances: list[Instance]
    vms: dict[str, Vm]

    @property
    def staying(self) -> list[Instance]:
        return [i for i in self.instances if i.state != InstanceState.LEAVING]

    def outdated(self) -> list[Instance]:
        return [i for i in self.staying if i.model_version != self.scale_set.model_version]

    def broken(self) -> list[Instance]:
        """Instances that should serve but never will: their VM is gone, failed, or stuck on a failed
        host with nowhere else to run. Not broken: a
        joining one with no VM yet (its VM was never asked for; converging asks for it), and a
        leaving one whose VM is gone (its delete got that far; converging forgets it)."""
        return [
            i
            for i in self.instances
            if i.state != InstanceState.LEAVING
            and (
                (i.vm_name not in self.vms and i.state != InstanceState.JOINING)
                or (i.vm_name in self.vms and self.vms[i.vm_name].provisioning_state == ProvisioningState.FAILED)
                # Its host failed and it cannot start elsewhere (local disks): replaced.
                or (
                    i.vm_name in self.vms and self.vms[i.vm_name].unavailable is not None and not self.vms[i.vm_name].ha
                )
            )
        ]


def _stranded(vm: Vm) -> bool:
    return vm.unavailable is not None and not vm.ha


class Converger:
    def __init__(
        self,
        db: Database,
        engine: Engine,
        vms: VmService,
        balancer: Balancer,
        prober: Prober,
        ready_timeout: float,
    ) -> None:
        self.db = db
        self.engine = engine
        self.vms = vms
        self.balancer = balancer
        self.prober = prober
        self.ready_timeout = ready_timeout
        self._failures: dict[str, tuple[int, float]] = {}  # set -> (converges failed in a row, when)

    # --- reading -----------------------------------------------------------------------------
    def look(self, session: Session, name: str) -> SetView:
        sets = ScaleSetRepo(session)
        instances = sets.instances(name)
        wanted = {i.vm_name for i in instances}
        vms = {vm.name: vm for vm in VmRepo(session).list() if vm.name in wanted}
        return SetView(sets.get(name), instances, vms)

    def needs_work(self, session: Session, scale_set: ScaleSet) -> bool:
        view = self.look(session, scale_set.name)
        return (
            len(view.staying) != scale_set.capacity
            or bool(view.outdated())
            or bool(view.broken())
            or any(i.state != InstanceState.SERVING for i in view.instances)
        )

    def _view(self, name: str) -> SetView:
        with self.db.session() as session:
            return self.look(session, name)

    # --- converge ----------------------------------------------------------------------------
    def converge(self, run: Run, name: str) -> dict[str, Any]:
        """Bring the set to its record. Re-run as a whole after a crash: it reads where the set
        stands (instances joining, serving, leaving) and goes on from there."""
        return self._counting_failures(name, lambda: self._converge(run, name))

    def _counting_failures(self, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            result = work()
        except BaseException:
            count, _ = self._failures.get(name, (0, 0.0))
            self._failures[name] = (count + 1, time.monotonic())
            raise
        self._failures.pop(name, None)
        return result

    def backing_off(self, name: str) -> bool:
        """After a failed converge, healing waits 30 s, doubling with each failure up to 10 min,
        so a set that cannot be satisfied (no room, an image that never boots) is retried, not
        hammered."""
        count, at = self._failures.get(name, (0, 0.0))
        return count > 0 and time.monotonic() - at < min(600.0, 30.0 * 2 ** (count - 1))

    def _converge(self, run: Run, name: str) -> dict[str, Any]:
        failed_rounds = 0
        view = self._view(name)
        rounds = BASE_ROUNDS + 3 * max(view.scale_set.capacity, len(view.instances))
        for _ in range(rounds):
            run.check_canceled()  # a cancel stops at the next round; the operation then undoes
            view = self._view(name)
            target = view.scale_set.capacity
            if view.broken():
                self._replace(run, name, view.broken(), "it failed or vanished")
                continue
            stranded = [i for i in view.instances if i.state == InstanceState.JOINING]
            unborn = [i.vm_name for i in stranded if i.vm_name not in view.vms]
            if unborn:  # reserved by a server that stopped before it asked for their VMs
                self._create(run, name, unborn, view.scale_set)
                continue
            if stranded:  # left joining by a server that stopped mid-way: admit or replace
                self._admit_all(run, name, [i.vm_name for i in stranded])
                continue
            leaving = [i.vm_name for i in view.instances if i.state == InstanceState.LEAVING]
            staying = view.staying
            if leaving:
                self._remove(run, name, leaving)
            elif len(staying) < target:
                came_up = self._grow(run, name, target - len(staying))
                failed_rounds = 0 if came_up else failed_rounds + 1
                if failed_rounds >= MAX_FAILED_ROUNDS:
                    raise OperationFailed(
                        f"scale set {name}: no instance came up in {MAX_FAILED_ROUNDS} attempts in a row; "
                        f"last: {self._view(name).scale_set.error}"
                    )
            elif len(staying) > target:
                self._shrink(run, name, len(staying) - target)
            elif view.outdated():
                self._roll(run, name, view)
            else:
                break
        else:
            raise OperationFailed(f"scale set {name} did not settle in {rounds} rounds; healing will carry on")
        view = self._view(name)
        run.progress(100, f"{len(view.staying)} instances serving")
        return {"instances": [i.vm_name for i in view.staying], "replaced": view.scale_set.replaced}

    # --- growing -----------------------------------------------------------------------------
    def _grow(self, run: Run, name: str, count: int) -> int:
        """Create ``count`` instances of the current model; how many came up and serve."""
        names, scale_set = self._reserve(run, name, count)
        return self._create(run, name, names, scale_set)

    def _create(self, run: Run, name: str, names: list[str], scale_set: ScaleSet) -> int:
        """Create the VMs of reserved instances, wait for them to boot, admit those that did."""
        run.progress(run.operation.progress, f"creating {', '.join(names)}")
        operations: dict[str, str] = {}
        refusal: FlexvmError | None = None
        for vm_name in names:
            still_owned(run)
            try:
                operations[vm_name] = self.vms.create(
                    vm_name,
                    scale_set.size,
                    scale_set.image,
                    user_data=scale_set.user_data,
                    availability_set=scale_set.availability_set,
                    network=scale_set.network,
                ).id
            except FlexvmError as err:  # no room, most likely: the rest would be refused too
                refusal = err
                self._forget(run, name, [n for n in names if n not in operations])
                break
        booted = []
        for vm_name, operation_id in operations.items():
            finished = self.engine.wait(operation_id, self.ready_timeout + 180)
            if finished.status == OperationStatus.SUCCEEDED:
                booted.append(vm_name)
            else:
                reason = (finished.error or {}).get("message", finished.message)
                self._replace(run, name, [self._instance(vm_name)], f"its create failed: {reason}")
        came_up = self._admit_all(run, name, booted)
        if refusal is not None:
            self._note_error(run, name, f"could not create more instances: {refusal.message}")
            raise refusal
        return came_up

    def _reserve(self, run: Run, name: str, count: int) -> tuple[list[str], ScaleSet]:
        """Names for new instances, recorded as joining before any VM exists (a server that stops
        now leaves records the next converge can settle, never unnamed VMs)."""
        with run.fenced() as session:
            sets = ScaleSetRepo(session)
            scale_set = sets.lock(name)
            names = [scale_set.instance_name(scale_set.next_index + n) for n in range(count)]
            for n, vm_name in enumerate(names):
                sets.add_instance(
                    Instance(
                        vm_name,
                        name,
                        scale_set.next_index + n,
                        scale_set.model_version,
                        InstanceState.JOINING,
                        utcnow(),
                    )
                )
            scale_set.next_index += count
            sets.save(scale_set)
        return names, scale_set

    def _admit_all(self, run: Run, name: str, vm_names: list[str]) -> int:
        admitted = 0
        for vm_name in vm_names:
            view = self._view(name)
            vm = view.vms.get(vm_name)
            if vm is None or vm.provisioning_state != ProvisioningState.SUCCEEDED:
                if vm is not None and vm.provisioning_state == ProvisioningState.CREATING and vm.active_operation_id:
                    self.engine.wait(vm.active_operation_id, self.ready_timeout + 180)
                    continue  # the next round looks again
                self._replace(run, name, [self._instance(vm_name)], "it never finished booting")
                continue
            problem = self._probe_until_ready(view.scale_set, vm)
            if problem is not None:
                self._replace(run, name, [self._instance(vm_name)], problem)
                continue
            self._set_state(run, vm_name, InstanceState.SERVING)
            self.balancer.sync()
            if view.scale_set.load_balancer is not None and not self.balancer.wait_up(name, vm_name, LB_UP_TIMEOUT):
                log.warning("%s: the load balancer's checks have not passed after %.0f s", vm_name, LB_UP_TIMEOUT)
            admitted += 1
            run.progress(run.operation.progress, f"{vm_name} is serving")
        return admitted

    def _probe_until_ready(self, scale_set: ScaleSet, vm: Vm) -> str | None:
        """None once the instance answers its probe; else why it is not fit to serve."""
        lb = scale_set.load_balancer
        if lb is None:
            return None
        ip = next((nic.ip for nic in vm.nics if nic.ip), None)
        if ip is None:
            return "it has no address the load balancer can reach"
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.prober(ip, lb.backend_port, lb.probe_path):
                return None
            time.sleep(PROBE_INTERVAL)
        probe = f"GET http://{ip}:{lb.backend_port}{lb.probe_path}"
        return f"its probe {probe} did not answer 200 in {self.ready_timeout:.0f} s"

    # --- shrinking ---------------------------------------------------------------------------
    def _shrink(self, run: Run, name: str, count: int) -> None:
        view = self._view(name)
        victims = choose_victims(self._candidates(view), count, view.scale_set.scale_in_policy)
        self._remove(run, name, victims)

    def _candidates(self, view: SetView) -> list[Candidate]:
        with self.db.session() as session:
            domains = {h.name: h.fault_domain or h.name for h in HostRepo(session).list()}
        candidates = []
        for instance in view.staying:
            vm = view.vms.get(instance.vm_name)
            host = (vm.host or vm.disk_host) if vm else None
            candidates.append(
                Candidate(
                    instance.vm_name,
                    instance.index,
                    domains.get(host or "", ""),
                    instance.state,
                    instance.model_version == view.scale_set.model_version,
                )
            )
        return candidates

    def _remove(self, run: Run, name: str, vm_names: list[str]) -> None:
        """Drain, take out of the load balancer, delete."""
        for vm_name in vm_names:
            self._set_state(run, vm_name, InstanceState.LEAVING)
        run.progress(run.operation.progress, f"draining {', '.join(vm_names)}")
        if self._view(name).scale_set.load_balancer is not None:
            # All at once: a large set's delete waits for its slowest request, not for the sum.
            with ThreadPoolExecutor(max_workers=min(16, len(vm_names)), thread_name_prefix="drain") as pool:
                emptied = pool.map(lambda vm: self.balancer.drain(name, vm, DRAIN_TIMEOUT), vm_names)
                for vm_name, empty in zip(vm_names, emptied, strict=True):
                    if not empty:
                        log.warning(
                            "%s: requests still in flight after %.0f s; deleting anyway", vm_name, DRAIN_TIMEOUT
                        )
        self.balancer.sync()
        self._delete_vms(run, name, vm_names)

    def _delete_vms(self, run: Run, name: str, vm_names: list[str]) -> None:
        operations = {}
        for vm_name in vm_names:
            with contextlib.suppress(NotFound):  # already gone
                operations[vm_name] = self._delete_vm(run, vm_name)
        for vm_name, operation_id in operations.items():
            finished = self.engine.wait(operation_id, 300)
            if finished.status != OperationStatus.SUCCEEDED:
                raise OperationFailed(f"could not delete instance {vm_name}: {finished.message}")
        self._forget(run, name, vm_names)
        run.progress(run.operation.progress, f"removed {', '.join(vm_names)}")

    def _delete_vm(self, run: Run, vm_name: str) -> str:
        """Start the VM's delete, first waiting for an operation that holds it (a resize, a move)."""
        still_owned(run)
        try:
            return self.vms.delete(vm_name).id
        except Busy:
            holder = self.vms.get(vm_name).active_operation_id
            if holder is not None:
                self.engine.wait(holder, 600)
            return self.vms.delete(vm_name).id

    def _replace(self, run: Run, name: str, instances: list[Instance], reason: str) -> None:
        """Delete instances that will not serve; the next round creates replacements."""
        names = [i.vm_name for i in instances]
        log.warning("scale set %s: replacing %s: %s", name, ", ".join(names), reason)
        for vm_name in names:
            self._set_state(run, vm_name, InstanceState.LEAVING)
        self.balancer.sync()
        self._delete_vms(run, name, names)
        with run.fenced() as session:
            sets = ScaleSetRepo(session)
            scale_set = sets.lock(name)
            scale_set.replaced += len(names)
            scale_set.error = f"instance {', '.join(names)} replaced: {reason}"
            sets.save(scale_set)

    # --- rolling a new model -----------------------------------------------------------------
    def _roll(self, run: Run, name: str, view: SetView) -> None:
        """Replace up to max_unavailable old-model instances: new ones first (so serving capacity
        never drops), then the old ones drained and deleted."""
        batch = sorted(view.outdated(), key=lambda i: i.index)[: view.scale_set.max_unavailable]
        run.progress(run.operation.progress, f"rolling {', '.join(i.vm_name for i in batch)} onto the new model")
        came_up = self._grow(run, name, len(batch))
        if came_up == 0:
            raise OperationFailed(f"scale set {name}: no new-model instance came up; the old ones were kept")
        self._remove(run, name, [i.vm_name for i in batch[:came_up]])

    # --- deleting the set --------------------------------------------------------------------
    def delete(self, run: Run, name: str, after: str | None = None) -> dict[str, Any]:
        """Remove every instance, then the set. One that fails is finished by a later heal (the
        set stays marked deleting), backing off like a failed converge."""
        if after is not None:  # a converge was running: it sees capacity 0 and shrinks; then we go on
            run.progress(0, f"waiting for operation {after[:8]} to finish")
            self.engine.wait(after, 3600)
        result = self._counting_failures(name, lambda: self._delete(run, name))
        self._failures.pop(name, None)
        return result

    def _delete(self, run: Run, name: str) -> dict[str, Any]:
        view = self._view(name)
        names = [i.vm_name for i in view.instances]
        if names:
            self._remove(run, name, names)
        with run.fenced() as session:
            ScaleSetRepo(session).delete(name)
            availability = AvailabilitySetRepo(session)
            if name in {a.name for a in availability.list()}:
                availability.delete(name)
        self.balancer.sync()
        return {"deleted": names}

    # --- small record changes ----------------------------------------------------------------
    def _instance(self, vm_name: str) -> Instance:
        with self.db.session() as session:
            found = ScaleSetRepo(session).instance_of(vm_name)
        assert found is not None, vm_name
        return found

    def _set_state(self, run: Run, vm_name: str, state: InstanceState) -> None:
        with run.fenced() as session:
            ScaleSetRepo(session).set_state(vm_name, state)

    def _forget(self, run: Run, name: str, vm_names: list[str]) -> None:
        with run.fenced() as session:
            sets = ScaleSetRepo(session)
            for vm_name in vm_names:
                sets.remove_instance(vm_name)

    def _note_error(self, run: Run, name: str, message: str) -> None:
        with run.fenced() as session:
            sets = ScaleSetRepo(session)
            scale_set = sets.find(name)
            if scale_set is not None:
                scale_set.error = message
                sets.save(scale_set)


def still_owned(run: Run) -> None:
    """Stop here unless this server still owns the operation: a converge of a server that was
    paused past its lease must not start VMs' operations the new owner does not know about."""
    with run.fenced():
        pass
