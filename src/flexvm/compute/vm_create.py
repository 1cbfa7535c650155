"""Creating a VM: the request (checked, placed and claimed in one transaction), then the workflow
that builds the guest on its host, step by step, and boots it.

Steps: claim · image · os-disk · [seed] · define · console · start · booted · wait-ready · running.
Each checks before it acts, so a server that resumes the create after a crash goes on where the
guest is: a create interrupted while the guest boots ends with a running VM. If the host stops
answering before the guest runs, what it keeps is recorded as leftovers there and the VM is
placed on another host (unless pinned). Any other failure before the guest runs undoes every
step, newest first: no domain, disk, address or claim is left. A guest that runs but never says
it is ready is kept, marked failed, so its console can be read.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from flexvm.access.quotas import admit_vm
from flexvm.compute import guest_boot
from flexvm.compute.booting import Booter, upload_seed
from flexvm.compute.hosts import HostService
from flexvm.compute.images import ImageService
from flexvm.compute.networks import NetworkService
from flexvm.compute.placing import place_vm
from flexvm.compute.sizes import SizeService
from flexvm.compute.vm_records import VmRecords, leave_behind, remove_guest_and_files
from flexvm.config import Settings
from flexvm.drivers.base import Driver
from flexvm.errors import Action, AlreadyExists, FlexvmError, HypervisorUnavailable, InvalidInput, NotFound, Remedy
from flexvm.model.access import Quotas
from flexvm.model.image import Image
from flexvm.model.operation import Operation
from flexvm.model.projects import check_key
from flexvm.model.sizes import Size
from flexvm.model.storage import SharedStorage
from flexvm.model.units import format_bytes
from flexvm.model.vm import Disk, Nic, PowerState, ProvisioningState, Vm
from flexvm.operations.engine import Engine
from flexvm.operations.run import Run
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import AvailabilitySetRepo, HostRepo, ImageRepo, LeftoverRepo, NetworkRepo, VmRepo
from flexvm.store.scaling import ScaleSetRepo
from flexvm.store.storage import StorageRepo

log = logging.getLogger(__name__)

MAX_USER_DATA = 64 * 1024
MAX_REASONS_KEPT = 20
KIND = "vm.create"


@dataclass(frozen=True)
class OsDiskSource:
    """An OS disk that comes as a file (an import) instead of an overlay on the image."""

    archive: Path  # a tar holding it
    member: str
    disk_bytes: int

    def to_params(self) -> dict[str, Any]:
        return {"archive": str(self.archive), "member": self.member, "disk_bytes": self.disk_bytes}

    @classmethod
    def from_params(cls, data: dict[str, Any] | None) -> OsDiskSource | None:
        return None if not data else cls(Path(data["archive"]), str(data["member"]), int(data["disk_bytes"]))


def _placed(vm: Vm) -> dict[str, Any]:
    """Where a VM was put, as a step records it: the workflow builds on this, not on the live record."""
    return {"host": vm.host, "nics": [dataclasses.asdict(n) for n in vm.nics]}


class VmCreator:
    def __init__(
        self,
        db: Database,
        engine: Engine,
        hosts: HostService,
        sizes: SizeService,
        images: ImageService,
        networks: NetworkService,
        records: VmRecords,
        booter: Booter,
        settings: Settings,
    ) -> None:
        self.db = db
        self.engine = engine
        self.hosts = hosts
        self.sizes = sizes
        self.images = images
        self.networks = networks
        self.records = records
        self.booter = booter
        self.settings = settings
        engine.register(KIND, self._work)

    # --- the request ---------------------------------------------------------------------
    def create(
        self,
        name: str,
        size_name: str,
        image_name: str,
        *,
        user_data: str | None = None,
        host: str | None = None,
        availability_set: str | None = None,
        policy: str = "best-fit",
        max_size: str | None = None,
        os_disk: OsDiskSource | None = None,
        network: str | None = None,
        storage: str | None = None,
        ha: bool = False,
        ha_priority: int = 0,
    ) -> Operation:
        check_key("name", name)
        check_ha(ha, ha_priority, storage is not None)
        size = self.sizes.get(size_name)
        ceiling = self.ceiling(size, max_size)
        if user_data is not None and len(user_data.encode()) > MAX_USER_DATA:
            raise InvalidInput("user_data", f"is {len(user_data.encode())} bytes; the limit is {MAX_USER_DATA}")
        with self.db.session() as session:
            image = self._image(session, image_name, user_data)
            self._check_references(session, name, host, availability_set, network)
            vm = self._new_vm(name, size, ceiling, image, user_data, availability_set, network, os_disk)
            vm.storage = None if storage is None else _shared_storage(session, storage)
            vm.ha, vm.ha_priority = ha, ha_priority
            admit_vm(session, name, Quotas(vcpus=vm.vcpus, memory_mib=vm.memory_mib, vms=1, disk_bytes=vm.disk_bytes))
            placement = place_vm(session, vm, image, pinned=host, policy=policy)
            VmRepo(session).add(vm)
            session.flush()
            operation = self.engine.record(
                session,
                KIND,
                "vm",
                name,
                vm=vm,
                params={
                    "vm_id": vm.id,
                    "size": size.name,
                    "image": image.name,
                    "host": vm.host,
                    "pinned": host,
                    "availability_set": availability_set,
                    "policy": policy,
                    "os_disk": os_disk.to_params() if os_disk else None,
                    # Why other hosts were passed over; a sample, not 10,000 reasons.
                    "rejected": dict(list(placement.rejected.items())[:MAX_REASONS_KEPT]),
                },
            )
        return self.engine.launch(operation)

    def ceiling(self, size: Size, max_size: str | None) -> Size:
        """How far the VM may later grow without a restart: its family's largest size by default."""
        if max_size is None:
            return self.sizes.ceiling_for(size)
        ceiling = self.sizes.get(max_size, "max_size")
        if ceiling.vcpus < size.vcpus or ceiling.memory_mib < size.memory_mib:
            raise InvalidInput(
                "max_size",
                f"{ceiling.name} ({ceiling.describe()}) is smaller than {size.name} ({size.describe()})",
            )
        return ceiling

    @staticmethod
    def _image(session: Session, image_name: str, user_data: str | None) -> Image:
        images = ImageRepo(session)
        image = images.find(image_name)
        if image is None:
            known = ", ".join(i.name for i in images.list())
            raise InvalidInput(
                "image",
                f"unknown image '{image_name}'; known images: {known or 'none'}",
                remedy=None if known else Remedy(action=Action.BUILD_IMAGE, subject={"image": "tiny"}),
            )
        if user_data is not None and not image.cloud_init:
            raise InvalidInput(
                "user_data", f"image '{image_name}' does not run cloud-init, so user data would be ignored"
            )
        return image

    @staticmethod
    def _check_references(
        session: Session, name: str, host: str | None, availability_set: str | None, network: str | None
    ) -> None:
        if host is not None:
            HostRepo(session).get(host)
        if availability_set is not None:
            AvailabilitySetRepo(session).get(availability_set)
            _refuse_a_scale_sets_availability_set(session, availability_set, name)
        if network is not None:
            NetworkRepo(session).get(network)
        if VmRepo(session).find(name) is not None:
            raise AlreadyExists("VM", name)

    @staticmethod
    def _new_vm(
        name: str,
        size: Size,
        ceiling: Size,
        image: Image,
        user_data: str | None,
        availability_set: str | None,
        network: str | None,
        os_disk: OsDiskSource | None,
    ) -> Vm:
        vm_id = str(uuid.uuid4())
        disk_bytes = max(size.disk_bytes, image.virtual_size, os_disk.disk_bytes if os_disk else 0)
        disks = [Disk(f"{name}-os.qcow2", "os", disk_bytes)]
        if image.cloud_init:
            disks.append(Disk(f"{name}-seed.iso", "seed", 0))
        return Vm(
            id=vm_id,
            name=name,
            size=size.name,
            image=image.name,
            vcpus=size.vcpus,
            memory_mib=size.memory_mib,
            disk_bytes=disk_bytes,
            provisioning_state=ProvisioningState.CREATING,
            power_state=PowerState.STARTING,
            host=None,
            disk_host=None,
            created_at=utcnow(),
            user_data=user_data,
            disks=disks,
            # Placement puts the NIC on the chosen host's network; a network named here
            # limits placement to hosts on it.
            nics=[Nic(network or "user", guest_boot.mac_for(vm_id))],
            availability_set=availability_set,
            max_size=ceiling.name,
            max_vcpus=ceiling.vcpus,
            max_memory_mib=ceiling.memory_mib,
        )

    # --- the workflow --------------------------------------------------------------------
    def _work(self, run: Run) -> dict[str, Any]:
        params = run.params
        recorded = self.records.by_id(params["vm_id"])
        if recorded is None:
            raise NotFound("VM", run.operation.target_name)
        image = self.images.get(params["image"])
        os_disk = OsDiskSource.from_params(params.get("os_disk"))
        placed = run.step(
            "claim",
            lambda: _placed(recorded),
            undo=lambda _out: self.records.discard(recorded),
            detail="room claimed on the host when the request was accepted",
        )
        failed_hosts: list[str] = []
        while True:
            vm = dataclasses.replace(
                recorded, host=placed["host"], disk_host=placed["host"], nics=[Nic(**n) for n in placed["nics"]]
            )
            mark = run.undo_mark()
            try:
                driver = self._build(run, vm, image, os_disk)
                started = self.booter.start(run, driver, vm)
                break
            except HypervisorUnavailable as err:
                # The host stopped answering before the guest ran: what it keeps is recorded,
                # and (unless pinned) the VM goes to another host.
                run.drop_undos(mark)
                assert vm.host is not None
                failed_hosts.append(vm.host)
                self._leave(run, vm, err)
                if params.get("pinned") is not None:
                    raise
                re_place = functools.partial(
                    self._re_place,
                    vm=vm,
                    image=image,
                    excluded=frozenset(failed_hosts),
                    policy=params.get("policy", "best-fit"),
                )
                try:
                    placed = run.db_step(
                        "re-place", re_place, detail=f"host {vm.host} stopped answering: placing the VM elsewhere"
                    )
                except FlexvmError:
                    raise err from None
                self._withdraw_moved_addresses(vm, placed)
                run.result["failed_over_from"] = list(failed_hosts)
                run.progress(10, f"host {failed_hosts[-1]} stopped answering; trying host {placed['host']}")
        run.result["host"] = vm.host
        run.progress(60, "waiting for the guest to report ready")
        return self.booter.wait_ready(run, driver, vm, image, creating=True, offset=0, started_at=started["started_at"])

    def _build(self, run: Run, vm: Vm, image: Image, os_disk: OsDiskSource | None) -> Driver:
        assert vm.host is not None
        host_name = vm.host
        driver = self.hosts.driver(host_name)
        host = self.hosts.get(host_name)

        def prepare() -> bool:
            for nic in vm.nics:
                if nic.ip is not None and nic.network != "user":
                    self.networks.publish(nic.network, nic.mac, nic.ip)
            self.hosts.isolation.spread(vm, required=host_name)
            self._clear_own_leftovers(driver, vm)
            return self.images.ensure_on_host(driver, image)

        run.result["image_uploaded"] = run.step(
            "image", prepare, detail=f"making sure image '{image.name}' is on host {host_name}"
        )
        run.progress(20, "creating the OS disk")

        def os_disk_step() -> None:
            # Before the guest is defined nothing uses the disk: a re-run after a crash replaces
            # what the first attempt made (maybe half of it). A stale log must not fake readiness.
            driver.delete_instance_volume(vm.os_disk.name, store=vm.storage)
            driver.delete_instance_volume(vm.console_log, store=vm.storage)
            if os_disk is None:
                driver.create_overlay(
                    vm.os_disk.name,
                    guest_boot.image_volume(image, "disk"),
                    image.format,
                    vm.disk_bytes,
                    store=vm.storage,
                )
            else:
                self._upload_disk_from(driver, vm, os_disk)

        run.step(
            "os-disk",
            os_disk_step,
            undo=lambda _out: self._on_host(host_name, vm, lambda: _delete_os_disk(driver, vm)),
            undo_if_failed=True,
            detail=(
                f"{format_bytes(vm.disk_bytes)} copy-on-write overlay on '{image.name}'"
                if os_disk is None
                else f"the disk from {os_disk.archive.name}"
            ),
        )
        if image.cloud_init:
            seed = next(d for d in vm.disks if d.role == "seed")
            run.step(
                "seed",
                lambda: upload_seed(driver, vm, self.settings.ssh_keys),
                undo=lambda _out: self._on_host(
                    host_name, vm, lambda: driver.delete_instance_volume(seed.name, store=vm.storage)
                ),
                undo_if_failed=True,
                detail="cloud-init NoCloud seed",
            )

        def define() -> None:
            existing = driver.guest_info(vm.domain_name)
            if existing is not None:
                if existing.vm_id == vm.id:  # defined before the server died: ours
                    return
                raise AlreadyExists("guest", f"{vm.domain_name} on host {host_name}")
            isolated = self.hosts.isolation.isolates(host)
            driver.define(guest_boot.guest_spec(vm, image, host.accelerator, host.bridge, isolated=isolated))

        run.step(
            "define",
            define,
            undo=lambda _out: self._on_host(host_name, vm, lambda: _undefine(driver, vm)),
            detail=f"defining the guest on {host_name} ({host.accelerator.value})",
        )
        run.progress(40, "starting")
        return driver

    def _on_host(self, host: str, vm: Vm, action: Any) -> None:
        """Undo something on a host; if it does not answer, record what stays there instead."""
        try:
            action()
        except FlexvmError as err:
            log.warning("undo on %s for %s incomplete (%s); recorded as leftovers", host, vm.name, err.message)
            leave_behind(self.db, host, vm, f"create of VM {vm.name} (id {vm.id}) failed: {err.message}")

    def _leave(self, run: Run, vm: Vm, cause: FlexvmError) -> None:
        assert vm.host is not None
        host = vm.host

        def leave() -> bool:
            try:
                remove_guest_and_files(self.hosts.driver(host), vm)
                return True
            except FlexvmError:
                leave_behind(self.db, host, vm, f"create of VM {vm.name} (id {vm.id}) failed: {cause.message}")
                return False

        run.step("leave-host", leave, detail=f"what host {host} keeps of the failed attempt")

    def _clear_own_leftovers(self, driver: Driver, vm: Vm) -> None:
        """An earlier failed create of this name may have left its guest or disks on this host (it
        was unreachable then). The name is ours now, so they go before anything is made."""
        with self.db.session() as session:
            repo = LeftoverRepo(session)
            ours = {vm.domain_name, vm.console_log, *(d.name for d in vm.disks)}
            mine = [item for item in repo.on_host(vm.host or "") if item.name in ours]
        if not mine:
            return
        remove_guest_and_files(driver, vm)
        with self.db.session() as session:
            for item in mine:
                assert item.id is not None
                LeftoverRepo(session).remove(item.id)

    @staticmethod
    def _upload_disk_from(driver: Driver, vm: Vm, source: OsDiskSource) -> None:
        with tempfile.TemporaryDirectory(prefix="flexvm-disk-") as tmp, tarfile.open(source.archive) as archive:
            archive.extract(archive.getmember(source.member), tmp, filter="data")
            driver.upload_instance_volume(vm.os_disk.name, Path(tmp) / source.member, store=vm.storage)
        if vm.disk_bytes > source.disk_bytes:  # imported at a size with a larger disk
            driver.resize_instance_volume(vm.os_disk.name, vm.disk_bytes, guest=None, store=vm.storage)

    @staticmethod
    def _re_place(session: Session, vm: Vm, image: Image, excluded: frozenset[str], policy: str) -> dict[str, Any]:
        """Move the claim of a VM whose host failed mid-create: new host, new address, one transaction."""
        vms = VmRepo(session)
        current = vms.by_id(vm.id)
        if current is None:
            raise NotFound("VM", vm.name)
        current.host = current.disk_host = None
        # A fresh create may land on any network: its address is reserved anew wherever it goes.
        current.nics = [Nic("user", nic.mac) for nic in current.nics[:1]]
        vms.save(current)
        session.flush()
        place_vm(session, current, image, excluded=excluded, policy=policy)
        vms.save(current)
        return _placed(current)

    def _withdraw_moved_addresses(self, old: Vm, placed: dict[str, Any]) -> None:
        networks = {n["network"] for n in placed["nics"]}
        for nic in old.nics:
            if nic.network != "user" and nic.network not in networks:
                self.networks.withdraw(nic.network, nic.mac)


def _delete_os_disk(driver: Driver, vm: Vm) -> None:
    driver.delete_instance_volume(vm.os_disk.name, store=vm.storage)
    driver.delete_instance_volume(vm.console_log, store=vm.storage)


def _undefine(driver: Driver, vm: Vm) -> None:
    driver.destroy(vm.domain_name)
    driver.undefine(vm.domain_name)


HA_PRIORITIES = range(0, 1001)


def check_ha(ha: bool, priority: int, shared: bool) -> None:
    """HA needs shared storage: a VM whose disk is on one host cannot start on another."""
    if ha and not shared:
        raise InvalidInput("ha", "needs shared storage: a VM whose disk lives on one host cannot be started on another")
    if priority not in HA_PRIORITIES:
        raise InvalidInput("ha_priority", f"must be from 0 to 1000 (got {priority}); higher ones restart first")


def _shared_storage(session: Session, name: str) -> SharedStorage:
    found = StorageRepo(session).find(name)
    if found is None:
        known = ", ".join(s.name for s in StorageRepo(session).list())
        raise InvalidInput("storage", f"unknown storage '{name}'; known: {known or 'none (add one with storage add)'}")
    return found


def _refuse_a_scale_sets_availability_set(session: Session, availability_set: str, vm_name: str) -> None:
    """A scale set's availability set (named after the set) holds only its instances: another VM
    there would skew its spread, and scale-in would never pick it."""
    sets = ScaleSetRepo(session)
    owner = sets.find(availability_set)
    if owner is None:
        return
    instance = sets.instance_of(vm_name)
    if instance is None or instance.scale_set != owner.name:
        raise InvalidInput(
            "availability_set",
            f"availability set '{availability_set}' belongs to scale set '{owner.name}' and holds only its instances",
            remedy=Remedy(action=Action.ADD_SCALE_SET_INSTANCE, subject={"scale_set": owner.name}),
        )
