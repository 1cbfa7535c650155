"""Scale sets: create, scale, update the model, delete — each an operation; the work is in converge.py.

A scale set is a record (its model, its capacity) and instances that are ordinary VMs built from
that model. Requests are checked here, in the transaction that records the operation; then
``Converger`` brings the instances to the record. Autoscale changes the same capacity field.
"""

from __future__ import annotations

import builtins
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from flexvm.access.quotas import admit_instances
from flexvm.capacity.planning import take_room
from flexvm.compute.placing import pool_snapshots, spread_of
from flexvm.compute.sizes import SizeService
from flexvm.config import Settings
from flexvm.errors import Action, Busy, CapacityError, InvalidInput, Remedy
from flexvm.images.cloudinit import MAX_USER_DATA
from flexvm.model.availability import MAX_FAULT_DOMAINS, AvailabilitySet
from flexvm.model.host import HostState
from flexvm.model.image import Image
from flexvm.model.operation import Operation
from flexvm.model.projects import check_key
from flexvm.model.scaleset import MAX_INSTANCES, Instance, InstanceState, LoadBalancerSpec, ScaleInPolicy, ScaleSet
from flexvm.model.sizes import Size
from flexvm.model.vm import Vm
from flexvm.operations.engine import Engine
from flexvm.operations.run import Run
from flexvm.scaling.converge import Converger
from flexvm.scheduler.placement import choose
from flexvm.scheduler.snapshot import HostSnapshot, Request, SetSpread
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import AvailabilitySetRepo, HostRepo, ImageRepo, OperationRepo, VmRepo
from flexvm.store.scaling import ScaleSetRepo

MAX_SET_NAME = 58  # room for "-<index>" in a 64-character VM name


@dataclass
class ScaleSetSpec:
    name: str
    size: str
    image: str
    instances: int
    lb_port: str | None = None  # "FRONT:BACK" or "PORT"
    lb_bind: str | None = None
    probe_path: str = "/"
    fault_domains: int | None = None
    user_data: str | None = None
    scale_in_policy: str = "default"
    max_unavailable: int = 1


@dataclass
class InstanceView:
    """An instance as `scaleset instances` shows it: the set's view and the VM's."""

    instance: Instance
    vm: Vm | None
    current_model: bool
    lb_status: str | None = None  # what the load balancer says (UP, DOWN, DRAIN...), when it has one

    def to_dict(self) -> dict[str, Any]:
        vm = self.vm
        return {
            "name": self.instance.vm_name,
            "index": self.instance.index,
            "state": self.instance.state.value,
            "model_version": self.instance.model_version,
            "current_model": self.current_model,
            "host": vm.host if vm else None,
            "ip": next((n.ip for n in vm.nics if n.ip), None) if vm else None,
            "power_state": vm.power_state.value if vm else None,
            "provisioning_state": vm.provisioning_state.value if vm else None,
            "lb_status": self.lb_status,
            "created_at": self.instance.created_at.isoformat(),
        }


def _release_set(session: Session, operation_id: str) -> None:
    """A scale set the ending operation held is free again."""
    sets = ScaleSetRepo(session)
    for scale_set in sets.list():
        if scale_set.active_operation_id == operation_id:
            scale_set.active_operation_id = None
            sets.save(scale_set)


def operation_live(session: Any, operation_id: str | None) -> bool:
    """Whether an operation is still pending or running, by its row: true for any server sharing
    the database (an interrupted one stays live until a server resumes and ends it)."""
    if operation_id is None:
        return False
    found = OperationRepo(session).find(operation_id)
    return found is not None and not found.status.finished


def _addresses_overlap(first: str, second: str) -> bool:
    """Two binds clash on a port when they are the same address or either is a wildcard."""
    wildcards = {"0.0.0.0", "::"}
    return first == second or first in wildcards or second in wildcards


def _port_free(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def parse_lb_port(text: str) -> tuple[int, int]:
    """'8080:80' -> (8080, 80); '80' -> (80, 80)."""
    parts = text.split(":")
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise InvalidInput("lb_port", f"'{text}' is not FRONT:BACK (e.g. 8080:80) or a single port")
    front, back = int(parts[0]), int(parts[-1])
    for port in (front, back):
        if not 1 <= port <= 65535:
            raise InvalidInput("lb_port", f"port {port} is outside 1-65535")
    return front, back


def check_instances(count: int, field: str = "instances") -> int:
    if not isinstance(count, int) or not 0 <= count <= MAX_INSTANCES:
        raise InvalidInput(field, f"must be a whole number from 0 to {MAX_INSTANCES} (got {count!r})")
    return count


class ScaleSetService:
    def __init__(
        self, db: Database, engine: Engine, sizes: SizeService, converger: Converger, settings: Settings
    ) -> None:
        self.db = db
        self.engine = engine
        for kind in ("scaleset.create", "scaleset.scale", "scaleset.update", "scaleset.heal"):
            engine.register(kind, self._converge_work, cancelable=True)
        engine.register("scaleset.delete", self._delete_work)
        engine.on_release(_release_set)
        self.sizes = sizes
        self.converger = converger
        self.settings = settings

    # --- reading -----------------------------------------------------------------------------
    def list(self) -> builtins.list[ScaleSet]:
        with self.db.session() as session:
            return ScaleSetRepo(session).list()

    def get(self, name: str) -> ScaleSet:
        with self.db.session() as session:
            return ScaleSetRepo(session).get(name)

    def members(self, name: str) -> builtins.list[Instance]:
        """The set's own records of its instances (no VM or load-balancer lookups)."""
        with self.db.session() as session:
            ScaleSetRepo(session).get(name)
            return ScaleSetRepo(session).instances(name)

    def instances(self, name: str) -> builtins.list[InstanceView]:
        with self.db.session() as session:
            scale_set = ScaleSetRepo(session).get(name)
            instances = ScaleSetRepo(session).instances(name)
            vms = {vm.name: vm for vm in VmRepo(session).list()}
        statuses = self.converger.balancer.statuses(name) if scale_set.load_balancer else {}
        return [
            InstanceView(i, vms.get(i.vm_name), i.model_version == scale_set.model_version, statuses.get(i.vm_name))
            for i in instances
        ]

    # --- create ------------------------------------------------------------------------------
    def create(self, spec: ScaleSetSpec) -> Operation:
        scale_set = self._check_spec(spec)
        size = self.sizes.get(scale_set.size)  # before the session: a custom size reads the store
        with self.db.session() as session:
            sets = ScaleSetRepo(session)
            if sets.find(spec.name) is not None:
                raise InvalidInput("name", f"scale set '{spec.name}' already exists")
            if spec.name in {a.name for a in AvailabilitySetRepo(session).list()}:
                raise InvalidInput("name", f"'{spec.name}' is already an availability set's name; choose another")
            image = ImageRepo(session).find(spec.image)
            if image is None:
                known = ", ".join(i.name for i in ImageRepo(session).list()) or "none"
                raise InvalidInput("image", f"unknown image '{spec.image}'; known images: {known}")
            if spec.user_data is not None and not image.cloud_init:
                raise InvalidInput("user_data", f"image '{spec.image}' does not run cloud-init")
            if scale_set.load_balancer is not None:
                scale_set.network = self._network_for_balancer(session, scale_set.load_balancer)
                self._check_front_port_free(sets.list(), scale_set.load_balancer)
            scale_set.fault_domains = self._fault_domains(session, spec, scale_set.network)
            self._check_room(session, scale_set, size, spec.instances, image, existing=False)
            admit_instances(session, scale_set.name, size, spec.instances)
            sets.add(scale_set)
            AvailabilitySetRepo(session).add(AvailabilitySet(scale_set.name, scale_set.fault_domains, utcnow()))
            operation = self._record(session, scale_set, "scaleset.create", {"instances": spec.instances, "new": True})
        return self.engine.launch(operation)

    def _check_spec(self, spec: ScaleSetSpec) -> ScaleSet:
        check_key("name", spec.name)
        if len(spec.name) > MAX_SET_NAME:
            raise InvalidInput("name", f"at most {MAX_SET_NAME} characters (instances are named <set>-<index>)")
        size = self.sizes.get(spec.size)
        check_instances(spec.instances)
        try:
            policy = ScaleInPolicy(spec.scale_in_policy)
        except ValueError:
            known = ", ".join(p.value for p in ScaleInPolicy)
            raise InvalidInput("scale_in_policy", f"unknown policy '{spec.scale_in_policy}'; known: {known}") from None
        fault_domains = spec.fault_domains if spec.fault_domains is not None else 1  # settled in create()
        if not 1 <= fault_domains <= MAX_FAULT_DOMAINS:
            raise InvalidInput("fault_domains", f"must be between 1 and {MAX_FAULT_DOMAINS} (got {fault_domains})")
        if not 1 <= spec.max_unavailable <= MAX_INSTANCES:
            raise InvalidInput("max_unavailable", f"must be from 1 to {MAX_INSTANCES} (got {spec.max_unavailable})")
        if spec.user_data is not None and len(spec.user_data.encode()) > MAX_USER_DATA:
            raise InvalidInput("user_data", f"is {len(spec.user_data.encode())} bytes; the limit is {MAX_USER_DATA}")
        return ScaleSet(
            name=spec.name,
            size=size.name,
            image=spec.image,
            capacity=spec.instances,
            fault_domains=fault_domains,
            scale_in_policy=policy,
            created_at=utcnow(),
            load_balancer=self._balancer_spec(spec) if spec.lb_port else None,
            user_data=spec.user_data,
            max_unavailable=spec.max_unavailable,
        )

    def _balancer_spec(self, spec: ScaleSetSpec) -> LoadBalancerSpec:
        assert spec.lb_port is not None
        front, back = parse_lb_port(spec.lb_port)
        bind = spec.lb_bind or self.settings.lb_bind
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise InvalidInput("lb_bind", f"'{bind}' is not an IP address") from None
        if not spec.probe_path.startswith("/") or any(c.isspace() for c in spec.probe_path):
            raise InvalidInput("probe_path", f"'{spec.probe_path}' must start with / and contain no spaces")
        return LoadBalancerSpec(bind, front, back, spec.probe_path)

    @staticmethod
    def _network_for_balancer(session: Any, balancer: LoadBalancerSpec) -> str:
        """Instances behind a load balancer need addresses it can reach: a host network, not QEMU's
        user-mode NAT (whose guests are unreachable from outside their own QEMU)."""
        networks = sorted({h.network for h in HostRepo(session).list() if h.network and h.state == HostState.UP})
        if not networks:
            raise InvalidInput(
                "lb_port",
                "a load balancer needs instances on a host network it can reach, and no host that is up has one "
                "(hosts on QEMU's user-mode network are unreachable from outside)",
                remedy=Remedy(action=Action.ADD_HOST_ON_NETWORK),
            )
        return networks[0]

    def _check_front_port_free(self, sets: builtins.list[ScaleSet], balancer: LoadBalancerSpec) -> None:
        """A frontend that cannot bind would fail every reload, for every set: refuse it here."""
        where = f"{balancer.bind_address}:{balancer.port}"
        for other in sets:
            lb = other.load_balancer
            if lb and lb.port == balancer.port and _addresses_overlap(lb.bind_address, balancer.bind_address):
                raise InvalidInput("lb_port", f"{where} is already scale set '{other.name}''s frontend")
        if balancer.port == self.settings.port and _addresses_overlap(self.settings.listen_host, balancer.bind_address):
            raise InvalidInput("lb_port", f"{where} is the flexvm API's own port")
        if not _port_free(balancer.bind_address, balancer.port):
            raise InvalidInput("lb_port", f"{where} is already in use by another program")

    def _check_room(
        self, session: Any, scale_set: ScaleSet, size: Size, extra: int, image: Image, *, existing: bool
    ) -> None:
        """Refuse a set the pool cannot hold, saying how many would fit: the instances placed on
        paper one by one, as the scheduler will, spread over the set's fault domains."""
        if extra <= 0:
            return
        pool = {s.host.name: s for s in pool_snapshots(session, lock=False)}
        spread = spread_of(session, scale_set.availability_set) if existing else None
        members = dict(spread.members_by_domain) if spread else {}
        placed, why = 0, ""
        for _ in range(extra):
            request = Request(
                size.vcpus,
                size.memory_mib,
                max(size.disk_bytes, image.virtual_size),
                requires=frozenset(image.requires),
                network=scale_set.network,
                spread=SetSpread(scale_set.name, scale_set.fault_domains, dict(members)),
            )
            try:
                chosen = choose(list(pool.values()), request).host.name
            except CapacityError as err:
                why = err.message
                break
            placed += 1
            pool[chosen] = HostSnapshot(pool[chosen].host, take_room(pool[chosen].room, request))
            domain = pool[chosen].fault_domain
            members[domain] = members.get(domain, 0) + 1
        if placed < extra:
            raise CapacityError(
                f"the pool can hold {placed} more {size.name} instance{'s' if placed != 1 else ''}, not {extra}: {why}",
                details={"fits": placed, "requested": extra},
            )

    def _fault_domains(self, session: Any, spec: ScaleSetSpec, network: str | None) -> int:
        """As many as the hosts that could hold instances offer (at most 3) unless given; more
        than they offer would leave the spread rule unable to place a balanced set."""
        hosts = [
            h for h in HostRepo(session).list() if h.state == HostState.UP and (network is None or h.network == network)
        ]
        available = len({h.fault_domain or h.name for h in hosts})
        if spec.fault_domains is None:
            return max(1, min(3, available))
        if spec.fault_domains > max(1, available):
            raise InvalidInput(
                "fault_domains",
                f"{spec.fault_domains} asked, but the hosts that could hold instances offer {available} "
                f"fault domain{'s' if available != 1 else ''}",
            )
        return spec.fault_domains

    def _record(self, session: Any, scale_set: ScaleSet, kind: str, params: dict[str, Any]) -> Operation:
        if scale_set.deleting:
            raise InvalidInput("name", f"scale set '{scale_set.name}' is being deleted")
        if operation_live(session, scale_set.active_operation_id):
            assert scale_set.active_operation_id is not None
            raise Busy("scale set", scale_set.name, scale_set.active_operation_id)
        operation = self.engine.record(session, kind, "scaleset", scale_set.name, params=params)
        scale_set.active_operation_id = operation.id
        ScaleSetRepo(session).save(scale_set)
        return operation

    # --- scale, update, delete ---------------------------------------------------------------
    def scale(self, name: str, instances: int) -> Operation:
        check_instances(instances)
        size = self.sizes.get(self.get(name).size)
        with self.db.session() as session:
            scale_set = ScaleSetRepo(session).lock(name)
            profile = scale_set.autoscale
            if profile and profile.get("enabled", True) and not profile["min"] <= instances <= profile["max"]:
                raise InvalidInput(
                    "instances",
                    f"{instances} is outside the autoscale range {profile['min']}-{profile['max']}",
                    remedy=Remedy(action=Action.CHANGE_AUTOSCALE_RANGE, subject={"scale_set": name}),
                )
            image = ImageRepo(session).get(scale_set.image)
            staying = [i for i in ScaleSetRepo(session).instances(name) if i.state != InstanceState.LEAVING]
            extra = instances - len(staying)
            self._check_room(session, scale_set, size, extra, image, existing=True)
            admit_instances(session, name, size, instances - scale_set.capacity)
            was = scale_set.capacity
            scale_set.capacity = instances
            operation = self._record(
                session, scale_set, "scaleset.scale", {"instances": instances, "was": {"capacity": was}}
            )
        return self.engine.launch(operation)

    def update_model(
        self, name: str, *, size: str | None = None, image: str | None = None, max_unavailable: int | None = None
    ) -> Operation:
        """Change the model; the operation rolls the instances onto it, max_unavailable at a time."""
        if size is None and image is None and max_unavailable is None:
            raise InvalidInput("size", "give a new size, image or max_unavailable")
        current = self.get(name)
        new_size = self.sizes.get(size or current.size)
        if max_unavailable is not None and not 1 <= max_unavailable <= MAX_INSTANCES:
            raise InvalidInput("max_unavailable", f"must be from 1 to {MAX_INSTANCES} (got {max_unavailable})")
        with self.db.session() as session:
            scale_set = ScaleSetRepo(session).lock(name)
            if image is not None:
                found = ImageRepo(session).find(image)
                if found is None:
                    raise InvalidInput("image", f"unknown image '{image}'")
                if scale_set.user_data is not None and not found.cloud_init:
                    raise InvalidInput("image", f"image '{image}' does not run cloud-init, and the set has user data")
            changed = (new_size.name, image or scale_set.image) != (scale_set.size, scale_set.image)
            was = {"size": scale_set.size, "image": scale_set.image, "model_version": scale_set.model_version}
            scale_set.size = new_size.name
            scale_set.image = image or scale_set.image
            scale_set.max_unavailable = max_unavailable or scale_set.max_unavailable
            if changed:
                scale_set.model_version += 1
                # New instances join before old ones leave: a batch of them must fit beside the set.
                staying = [i for i in ScaleSetRepo(session).instances(name) if i.state != InstanceState.LEAVING]
                batch = min(scale_set.max_unavailable, len(staying))
                image_now = ImageRepo(session).get(scale_set.image)
                self._check_room(session, scale_set, new_size, batch, image_now, existing=True)
            operation = self._record(
                session,
                scale_set,
                "scaleset.update",
                {
                    "size": scale_set.size,
                    "image": scale_set.image,
                    "model_version": scale_set.model_version,
                    "was": was,
                },
            )
        return self.engine.launch(operation)

    def delete(self, name: str) -> Operation:
        """Marked at once (so nothing regrows the set, even after a restart), then done by an
        operation that first lets a running one finish."""
        with self.db.session() as session:
            sets = ScaleSetRepo(session)
            scale_set = sets.lock(name)
            running = scale_set.active_operation_id if operation_live(session, scale_set.active_operation_id) else None
            if scale_set.deleting and running is not None:
                raise Busy("scale set", name, running)
            scale_set.deleting = True
            scale_set.capacity = 0
            operation = self.engine.record(session, "scaleset.delete", "scaleset", name, params={"after": running})
            scale_set.active_operation_id = operation.id
            sets.save(scale_set)
        return self.engine.launch(operation)

    def heal(self, name: str, *, now: bool = False) -> Operation | None:
        """Start a converge when the set drifted from its record (an instance died, the server was
        restarted mid-scale, autoscale changed the capacity) and nothing is working on it. Unless
        ``now``, not while backing off after failed converges."""
        if not now and self.converger.backing_off(name):
            return None
        with self.db.session() as session:
            sets = ScaleSetRepo(session)
            if sets.find(name) is None:
                return None
            scale_set = sets.lock(name)
            if operation_live(session, scale_set.active_operation_id):
                return None
            scale_set.active_operation_id = None  # left by a server that stopped mid-way, if any
            if scale_set.deleting:  # a delete that failed part way: finish it
                operation = self.engine.record(session, "scaleset.delete", "scaleset", name, params={"after": None})
                scale_set.active_operation_id = operation.id
                sets.save(scale_set)
            elif self.converger.needs_work(session, scale_set):
                operation = self._record(session, scale_set, "scaleset.heal", {"instances": scale_set.capacity})
            else:
                sets.save(scale_set)
                return None
        return self.engine.launch(operation)

    # --- workflows ---------------------------------------------------------------------------
    def _converge_work(self, run: Run) -> dict[str, Any]:
        name = run.operation.target_name
        run.step(
            "target",
            lambda: {"instances": run.params.get("instances")},
            undo=lambda _out: self._back_if_canceled(run, name),
            detail="the set's new record (a cancel goes back to the one before)",
        )
        return dict(run.step("converge", lambda: self.converger.converge(run, name), detail=f"bringing {name} to it"))

    def _back_if_canceled(self, run: Run, name: str) -> None:
        """A canceled scale or update goes back to what the set was before, and converges there;
        a canceled create removes the set. A failed one keeps its target: healing carries on."""
        if (run.operation.error or {}).get("code") != "Canceled":
            return
        was = run.params.get("was") or {}
        with self.db.session() as session:
            sets = ScaleSetRepo(session)
            scale_set = sets.lock(name)
            if run.params.get("new"):
                scale_set.deleting, scale_set.capacity = True, 0
            if "capacity" in was:
                scale_set.capacity = int(was["capacity"])
            if "model_version" in was:
                scale_set.size, scale_set.image = was["size"], was["image"]
                scale_set.model_version = int(was["model_version"])
            sets.save(scale_set)
        if run.params.get("new"):
            self.converger.delete(run, name)
        else:
            self.converger.converge(run, name)

    def _delete_work(self, run: Run) -> dict[str, Any]:
        name = run.operation.target_name
        after = run.params.get("after")
        return dict(
            run.step("delete", lambda: self.converger.delete(run, name, after=after), detail=f"removing {name}")
        )
