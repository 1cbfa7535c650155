"""Repositories: the only code that touches rows. They take a session and speak model dataclasses.

Every list has an ORDER BY: without one SQLite happens to answer in insertion order and PostgreSQL
in whatever order its pages hold the rows (an updated row moves), so code could work on one only.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, not_, or_, select
from sqlalchemy.orm import Session

from flexvm.errors import AlreadyExists, NotFound
from flexvm.model.availability import AvailabilitySet, Leftover
from flexvm.model.host import Accelerator, FenceAgent, Host, HostState
from flexvm.model.image import Image
from flexvm.model.network import Block, Network
from flexvm.model.operation import Operation, OperationStatus, Step
from flexvm.model.projects import PROJECT_TARGETS
from flexvm.model.sizes import Size
from flexvm.model.storage import SharedStorage
from flexvm.model.vm import Disk, Nic, PowerState, ProvisioningState, Vm
from flexvm.store.access import keys_in
from flexvm.store.tables import (
    AddressRow,
    AvailabilitySetRow,
    HostRow,
    ImageRow,
    LeftoverRow,
    NetworkBlockRow,
    NetworkRow,
    OperationRow,
    SizeRow,
    VmRow,
)


def _fields(obj: Any, *skip: str) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in skip}


# --- sizes -----------------------------------------------------------------------------------


class SizeRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def custom(self) -> list[Size]:
        rows = self.session.scalars(select(SizeRow).order_by(SizeRow.name))
        return [Size(r.name, r.vcpus, r.memory_mib, r.disk_bytes, r.family, builtin=False) for r in rows]

    def get_custom(self, name: str) -> Size | None:
        row = self.session.get(SizeRow, name)
        return None if row is None else Size(row.name, row.vcpus, row.memory_mib, row.disk_bytes, row.family, False)

    def add(self, size: Size) -> None:
        if self.session.get(SizeRow, size.name) is not None:
            raise AlreadyExists("size", size.name)
        self.session.add(SizeRow(**_fields(size, "builtin")))

    def delete(self, name: str) -> None:
        row = self.session.get(SizeRow, name)
        if row is None:
            raise NotFound("size", name)
        self.session.delete(row)


# --- images ----------------------------------------------------------------------------------


def _image(row: ImageRow) -> Image:
    columns = _columns_of(row, Image)
    columns["requires"] = list(row.requires or [])
    return Image(**columns)


class ImageRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def list(self) -> list[Image]:
        return [_image(r) for r in self.session.scalars(select(ImageRow).order_by(ImageRow.name))]

    def find(self, name: str) -> Image | None:
        row = self.session.get(ImageRow, name)
        return None if row is None else _image(row)

    def get(self, name: str) -> Image:
        image = self.find(name)
        if image is None:
            raise NotFound("image", name)
        return image

    def add(self, image: Image) -> None:
        if self.session.get(ImageRow, image.name) is not None:
            raise AlreadyExists("image", image.name)
        self.session.add(ImageRow(**_fields(image)))

    def delete(self, name: str) -> None:
        row = self.session.get(ImageRow, name)
        if row is None:
            raise NotFound("image", name)
        self.session.delete(row)

    def users(self, name: str) -> builtins.list[str]:
        return list(self.session.scalars(select(VmRow.name).where(VmRow.image == name).order_by(VmRow.name)))


# --- hosts -----------------------------------------------------------------------------------


_HOST_FIELDS = [f.name for f in dataclasses.fields(Host)]


def _host(row: Any) -> Host:
    """A Host from an ORM row or a plain result row (both have the columns as attributes)."""
    columns = {name: getattr(row, name) for name in _HOST_FIELDS}
    columns["state"] = HostState(row.state)
    columns["accelerator"] = Accelerator(row.accelerator)
    columns["fence_agent"] = FenceAgent(row.fence_agent)
    columns["fence_options"] = dict(row.fence_options or {})
    return Host(**columns)


class HostRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def list(self) -> list[Host]:
        return [_host(r) for r in self.session.scalars(select(HostRow).order_by(HostRow.name))]

    def find(self, name: str) -> Host | None:
        row = self.session.get(HostRow, name)
        return None if row is None else _host(row)

    def get(self, name: str) -> Host:
        host = self.find(name)
        if host is None:
            raise NotFound("host", name)
        return host

    def lock(self, name: str) -> Host:
        """Read a host row for update: claims against it are then serialised (PostgreSQL row lock;
        SQLite already holds the database write lock from BEGIN IMMEDIATE)."""
        row = self.session.scalars(select(HostRow).where(HostRow.name == name).with_for_update()).first()
        if row is None:
            raise NotFound("host", name)
        return _host(row)

    def lock_all(self) -> builtins.list[Host]:
        """Every host, read for update in one statement (see ``lock``). Plain rows, not ORM objects:
        the scheduler reads the whole pool for every placement, and this is 3x cheaper."""
        table = HostRow.__table__
        rows = self.session.execute(select(table).order_by(table.c.name).with_for_update())
        return [_host(row) for row in rows]

    def add(self, host: Host) -> None:
        if self.session.get(HostRow, host.name) is not None:
            raise AlreadyExists("host", host.name)
        if self.session.scalars(select(HostRow).where(HostRow.uri == host.uri)).first() is not None:
            raise AlreadyExists("host with URI", host.uri)
        self.session.add(HostRow(**_fields(host)))

    def save(self, host: Host) -> None:
        row = self.session.get(HostRow, host.name)
        if row is None:
            raise NotFound("host", host.name)
        for key, value in _fields(host, "name").items():
            setattr(row, key, value)

    def delete(self, name: str) -> None:
        row = self.session.get(HostRow, name)
        if row is None:
            raise NotFound("host", name)
        self.session.delete(row)


# --- VMs -------------------------------------------------------------------------------------


def _vm(row: VmRow) -> Vm:
    return Vm(
        id=row.id,
        name=row.name,
        size=row.size,
        image=row.image,
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        disk_bytes=row.disk_bytes,
        provisioning_state=ProvisioningState(row.provisioning_state),
        power_state=PowerState(row.power_state),
        host=row.host,
        disk_host=row.disk_host,
        availability_set=row.availability_set,
        max_size=row.max_size,
        max_vcpus=row.max_vcpus,
        max_memory_mib=row.max_memory_mib,
        moving_to=row.moving_to,
        created_at=row.created_at,
        ready_at=row.ready_at,
        boot_seconds=row.boot_seconds,
        user_data=row.user_data,
        active_operation_id=row.active_operation_id,
        error=row.error,
        disks=[Disk(**d) for d in row.disks],
        nics=[Nic(**n) for n in row.nics],
        storage=None if row.storage is None else SharedStorage(row.storage, row.storage_path or ""),
        ha=bool(row.ha),
        ha_priority=row.ha_priority or 0,
        unavailable=row.unavailable,
    )


class VmRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def list(self, *, host: str | None = None) -> list[Vm]:
        query = select(VmRow).order_by(VmRow.name)
        if host is not None:
            query = query.where(VmRow.host == host)
        return [_vm(r) for r in self.session.scalars(query)]

    def find(self, name: str) -> Vm | None:
        row = self._row(name)
        return None if row is None else _vm(row)

    def get(self, name: str) -> Vm:
        vm = self.find(name)
        if vm is None:
            raise NotFound("VM", name)
        return vm

    def by_id(self, vm_id: str) -> Vm | None:
        row = self.session.get(VmRow, vm_id)
        return None if row is None else _vm(row)

    def add(self, vm: Vm) -> None:
        if self._row(vm.name) is not None:
            raise AlreadyExists("VM", vm.name)
        self.session.add(self._to_row(vm))

    def save(self, vm: Vm) -> None:
        row = self.session.get(VmRow, vm.id)
        if row is None:
            raise NotFound("VM", vm.name)
        for key, value in self._columns(vm).items():
            setattr(row, key, value)

    def delete(self, vm_id: str) -> None:
        row = self.session.get(VmRow, vm_id)
        if row is not None:
            self.session.delete(row)

    def on_host(self, host: str) -> builtins.list[Vm]:
        """VMs that run on the host, keep their disks there, or are moving to it."""
        query = (
            select(VmRow)
            .where((VmRow.host == host) | (VmRow.disk_host == host) | (VmRow.moving_to == host))
            .order_by(VmRow.name)
        )
        return [_vm(r) for r in self.session.scalars(query)]

    def held_by(self, operation_id: str) -> builtins.list[Vm]:
        """VMs an operation holds busy."""
        query = select(VmRow).where(VmRow.active_operation_id == operation_id).order_by(VmRow.name)
        return [_vm(r) for r in self.session.scalars(query)]

    def in_set(self, availability_set: str) -> builtins.list[Vm]:
        query = select(VmRow).where(VmRow.availability_set == availability_set).order_by(VmRow.name)
        return [_vm(r) for r in self.session.scalars(query)]

    def allocations(self) -> dict[str, tuple[int, int, int]]:
        """(vCPUs, memory MiB, disk bytes) claimed on every host, in three grouped queries.

        CPU and memory are claimed where a VM runs (``host``), disk where its disks are
        (``disk_host``, deallocated or not), and all three on ``moving_to`` while it migrates.
        """
        totals: dict[str, list[int]] = {}

        def add(host: Any, vcpus: Any, memory: Any, disk: Any) -> None:
            row = totals.setdefault(str(host), [0, 0, 0])
            row[0] += int(vcpus or 0)
            row[1] += int(memory or 0)
            row[2] += int(disk or 0)

        compute = select(VmRow.host, func.sum(VmRow.vcpus), func.sum(VmRow.memory_mib)).where(VmRow.host.is_not(None))
        for host, vcpus, memory in self.session.execute(compute.group_by(VmRow.host)):
            add(host, vcpus, memory, 0)
        # A disk on shared storage takes none of its host's own disk.
        disks = select(VmRow.disk_host, func.sum(VmRow.disk_bytes)).where(
            VmRow.disk_host.is_not(None), VmRow.storage.is_(None)
        )
        for host, disk in self.session.execute(disks.group_by(VmRow.disk_host)):
            add(host, 0, 0, disk)
        local_disk = case((VmRow.storage.is_(None), VmRow.disk_bytes), else_=0)
        moving = select(VmRow.moving_to, func.sum(VmRow.vcpus), func.sum(VmRow.memory_mib), func.sum(local_disk))
        for host, vcpus, memory, disk in self.session.execute(
            moving.where(VmRow.moving_to.is_not(None)).group_by(VmRow.moving_to)
        ):
            add(host, vcpus, memory, disk)
        return {host: (v[0], v[1], v[2]) for host, v in totals.items()}

    def allocated_on(self, host: str) -> tuple[int, int, int]:
        """(vCPUs, memory MiB, disk bytes) claimed on one host; see ``allocations``."""
        return self.allocations().get(host, (0, 0, 0))

    def _row(self, name: str) -> VmRow | None:
        return self.session.scalars(select(VmRow).where(VmRow.name == name)).first()

    @staticmethod
    def _columns(vm: Vm) -> dict[str, Any]:
        columns = _fields(vm, "disks", "nics", "storage")
        columns["storage"] = None if vm.storage is None else vm.storage.name
        columns["storage_path"] = None if vm.storage is None else vm.storage.path
        columns["provisioning_state"] = vm.provisioning_state.value
        columns["power_state"] = vm.power_state.value
        columns["disks"] = [dataclasses.asdict(d) for d in vm.disks]
        columns["nics"] = [dataclasses.asdict(n) for n in vm.nics]
        return columns

    def _to_row(self, vm: Vm) -> VmRow:
        return VmRow(**self._columns(vm))


# --- operations ------------------------------------------------------------------------------


def _operation(row: OperationRow) -> Operation:
    return Operation(
        id=row.id,
        kind=row.kind,
        target_kind=row.target_kind,
        target_name=row.target_name,
        status=OperationStatus(row.status),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        progress=row.progress,
        message=row.message,
        steps=[Step.from_dict(s) for s in row.steps],
        error=row.error,
        result=dict(row.result),
        params=dict(row.params),
        owner=row.owner,
        fence=row.fence or 0,
        lease_expires=row.lease_expires,
        claims=row.claims or 0,
        cancel_requested=bool(row.cancel_requested),
    )


class OperationRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, operation: Operation) -> None:
        row = OperationRow(**_fields(operation, "status", "steps"))
        row.status = operation.status.value
        row.steps = [s.to_dict() for s in operation.steps]
        self.session.add(row)

    def save(self, operation: Operation) -> None:
        row = self.session.get(OperationRow, operation.id)
        if row is None:
            raise NotFound("operation", operation.id)
        for key, value in _fields(operation, "id", "status", "steps").items():
            setattr(row, key, value)
        row.status = operation.status.value
        row.steps = [s.to_dict() for s in operation.steps]

    def write_run_state(self, operation: Operation) -> None:
        """Store how far the operation got, leaving who owns it (lease, fence) and whether a
        cancel was asked for to the engine's own statements: other servers change those."""
        row = self.session.get(OperationRow, operation.id)
        if row is None:
            raise NotFound("operation", operation.id)
        row.status = operation.status.value
        row.progress = operation.progress
        row.message = operation.message
        row.steps = [s.to_dict() for s in operation.steps]
        row.error = operation.error
        row.result = dict(operation.result)
        row.started_at = operation.started_at
        row.finished_at = operation.finished_at

    def row(self, operation_id: str, *, lock: bool = False) -> OperationRow | None:
        """The row itself, locked for this transaction when asked (the engine's fenced writes)."""
        return self.session.get(OperationRow, operation_id, with_for_update=lock)

    def find(self, operation_id: str) -> Operation | None:
        row = self.session.get(OperationRow, operation_id)
        return None if row is None else _operation(row)

    def get(self, operation_id: str) -> Operation:
        operation = self.find(operation_id)
        if operation is None:
            raise NotFound("operation", operation_id)
        return operation

    def list(
        self,
        *,
        limit: int = 50,
        target: str | None = None,
        statuses: Iterable[OperationStatus] | None = None,
        project: str | None = None,
        with_platform: bool = False,
    ) -> list[Operation]:
        """Newest first. With ``project``: that project's operations (see
        ``model.projects.project_of_target``), and with ``with_platform`` the platform's too."""
        query = select(OperationRow).order_by(OperationRow.created_at.desc()).limit(limit)
        if project is not None:
            query = query.where(_of_project(project, with_platform))
        if target is not None:
            query = query.where(OperationRow.target_name == target)
        if statuses is not None:
            query = query.where(OperationRow.status.in_([s.value for s in statuses]))
        return [_operation(r) for r in self.session.scalars(query)]


def _of_project(project: str, with_platform: bool) -> ColumnElement[bool]:
    kind, name = OperationRow.target_kind, OperationRow.target_name
    private_image = and_(kind == "image", name.contains("."))
    ours = or_(
        and_(kind.in_(PROJECT_TARGETS), keys_in(name, project)),
        and_(kind == "image", name.startswith(f"{project}.")),
    )
    return or_(ours, and_(kind.not_in(PROJECT_TARGETS), not_(private_image))) if with_platform else ours


# --- networks and addresses ------------------------------------------------------------------


class NetworkRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def list(self) -> builtins.list[Network]:
        rows = self.session.scalars(select(NetworkRow).order_by(NetworkRow.name))
        return [Network(**_columns_of(r, Network)) for r in rows]

    def find(self, name: str) -> Network | None:
        row = self.session.get(NetworkRow, name)
        return None if row is None else Network(**_columns_of(row, Network))

    def get(self, name: str) -> Network:
        network = self.find(name)
        if network is None:
            raise NotFound("network", name)
        return network

    def add(self, network: Network) -> None:
        if self.session.get(NetworkRow, network.name) is not None:
            raise AlreadyExists("network", network.name)
        self.session.add(NetworkRow(**_fields(network)))

    def delete(self, name: str) -> None:
        row = self.session.get(NetworkRow, name)
        if row is None:
            raise NotFound("network", name)
        for block in self.session.scalars(select(NetworkBlockRow).where(NetworkBlockRow.network == name)):
            self.session.delete(block)
        self.session.flush()  # the blocks name the network
        self.session.delete(row)

    def used_addresses(self, network: str) -> set[str]:
        return set(self.session.scalars(select(AddressRow.ip).where(AddressRow.network == network)))

    def set_last_allocated(self, network: str, ip: str) -> None:
        row = self.session.get(NetworkRow, network)
        if row is not None:
            row.last_allocated = ip

    def macs(self, network: str) -> set[str]:
        return set(self.session.scalars(select(AddressRow.mac).where(AddressRow.network == network)))

    def reserve(self, network: str, ip: str, vm_id: str, mac: str, project: str) -> None:
        self.session.add(AddressRow(network=network, ip=ip, vm_id=vm_id, mac=mac, project=project))

    def addresses_in(self, network: str, project: str) -> builtins.list[str]:
        query = select(AddressRow.ip).where(AddressRow.network == network, AddressRow.project == project)
        return list(self.session.scalars(query))

    def blocks(self, network: str) -> dict[str, str]:
        """cidr -> project, of every block of ``network`` some project holds."""
        rows = self.session.scalars(select(NetworkBlockRow).where(NetworkBlockRow.network == network))
        return {r.cidr: r.project for r in rows}

    def block_list(self, network: str) -> builtins.list[Block]:
        """Every block of ``network`` some project holds, oldest first."""
        query = (
            select(NetworkBlockRow)
            .where(NetworkBlockRow.network == network)
            .order_by(NetworkBlockRow.created_at, NetworkBlockRow.cidr)
        )
        return [Block(r.cidr, r.project, r.last_allocated) for r in self.session.scalars(query)]

    def give_block(self, network: str, cidr: str, project: str) -> None:
        row = self.session.get(NetworkBlockRow, (network, cidr))
        if row is not None:
            row.project = project

    def add_block(self, network: str, cidr: str, project: str) -> None:
        self.session.add(NetworkBlockRow(network=network, cidr=cidr, project=project))
        self.session.flush()

    def set_block_cursor(self, network: str, cidr: str, ip: str) -> None:
        row = self.session.get(NetworkBlockRow, (network, cidr))
        if row is not None:
            row.last_allocated = ip

    def projects_on(self, network: str) -> builtins.list[str]:
        """Every project with a block or an address on ``network``."""
        held = select(AddressRow.project).where(AddressRow.network == network)
        blocked = select(NetworkBlockRow.project).where(NetworkBlockRow.network == network)
        return sorted(set(self.session.scalars(held)) | set(self.session.scalars(blocked)))

    def holdings_of(self, project: str) -> dict[str, tuple[int, builtins.list[str]]]:
        """network -> (addresses ``project``'s VMs hold there, its blocks there)."""
        counts = (
            select(AddressRow.network, func.count()).where(AddressRow.project == project).group_by(AddressRow.network)
        )
        held: dict[str, tuple[int, builtins.list[str]]] = {
            network: (int(count), []) for network, count in self.session.execute(counts)
        }
        blocks_of = select(NetworkBlockRow).where(NetworkBlockRow.project == project).order_by(NetworkBlockRow.cidr)
        for row in self.session.scalars(blocks_of):
            held.setdefault(row.network, (0, []))[1].append(row.cidr)
        return held

    def release_blocks_of(self, project: str) -> builtins.list[str]:
        """Give back every block ``project`` holds; the networks they were on."""
        rows = list(self.session.scalars(select(NetworkBlockRow).where(NetworkBlockRow.project == project)))
        for row in rows:
            self.session.delete(row)
        return sorted({r.network for r in rows})

    def addresses_of(self, vm_id: str) -> builtins.list[tuple[str, str, str]]:
        """(network, ip, mac) of every address a VM holds."""
        query = select(AddressRow).where(AddressRow.vm_id == vm_id).order_by(AddressRow.network, AddressRow.ip)
        return [(r.network, r.ip, r.mac) for r in self.session.scalars(query)]

    def release(self, vm_id: str) -> None:
        for row in self.session.scalars(select(AddressRow).where(AddressRow.vm_id == vm_id)):
            self.session.delete(row)

    def holders(self, network: str) -> builtins.list[str]:
        query = select(AddressRow.vm_id).where(AddressRow.network == network).order_by(AddressRow.ip)
        return list(self.session.scalars(query))


# --- availability sets -----------------------------------------------------------------------


class AvailabilitySetRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def list(self) -> builtins.list[AvailabilitySet]:
        rows = self.session.scalars(select(AvailabilitySetRow).order_by(AvailabilitySetRow.name))
        return [AvailabilitySet(r.name, r.fault_domains, r.created_at) for r in rows]

    def get(self, name: str) -> AvailabilitySet:
        row = self.session.get(AvailabilitySetRow, name)
        if row is None:
            raise NotFound("availability set", name)
        return AvailabilitySet(row.name, row.fault_domains, row.created_at)

    def add(self, availability_set: AvailabilitySet) -> None:
        if self.session.get(AvailabilitySetRow, availability_set.name) is not None:
            raise AlreadyExists("availability set", availability_set.name)
        self.session.add(AvailabilitySetRow(**_fields(availability_set)))

    def delete(self, name: str) -> None:
        row = self.session.get(AvailabilitySetRow, name)
        if row is None:
            raise NotFound("availability set", name)
        self.session.delete(row)


# --- leftovers -------------------------------------------------------------------------------


class LeftoverRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, host: str, kind: str, name: str, reason: str) -> None:
        self.session.add(LeftoverRow(host=host, kind=kind, name=name, reason=reason))

    def on_host(self, host: str) -> builtins.list[Leftover]:
        rows = self.session.scalars(select(LeftoverRow).where(LeftoverRow.host == host).order_by(LeftoverRow.id))
        return [Leftover(r.id, r.host, r.kind, r.name, r.reason, r.created_at) for r in rows]

    def remove(self, leftover_id: int) -> None:
        row = self.session.get(LeftoverRow, leftover_id)
        if row is not None:
            self.session.delete(row)


def _columns_of(row: Any, cls: Any) -> dict[str, Any]:
    return {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
