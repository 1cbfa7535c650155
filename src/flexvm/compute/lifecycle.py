"""VM lifecycle: create, start, stop, restart, deallocate, delete, grow a disk — each an operation.

Every public method validates and records in one transaction (so a refused request leaves
nothing, and capacity claims cannot race), then launches the work. Work that fails before a
guest exists rolls back everything it made; a guest that boots but never says it is ready is
kept, marked failed, so its console can be read.
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from flexvm.capacity.fit import Allocation, room_on, why_not
from flexvm.compute import guest_boot
from flexvm.compute.consoles import ConsoleArchive
from flexvm.compute.hosts import HostService
from flexvm.compute.images import ImageService
from flexvm.compute.networks import NetworkService
from flexvm.compute.operations import OperationContext, OperationRunner
from flexvm.compute.placing import place_vm
from flexvm.compute.sizes import SizeService
from flexvm.config import Settings
from flexvm.drivers.base import Driver
from flexvm.errors import (
    AlreadyExists,
    Busy,
    CapacityError,
    FlexvmError,
    HypervisorUnavailable,
    InvalidInput,
    InvalidState,
    OperationTimeout,
)
from flexvm.images.cloudinit import build_nocloud_seed
from flexvm.model.guest import GuestState
from flexvm.model.image import Image
from flexvm.model.names import check_name
from flexvm.model.operation import Operation
from flexvm.model.sizes import Size
from flexvm.model.units import format_bytes
from flexvm.model.vm import Disk, Nic, PowerState, ProvisioningState, Vm, check_action
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import AvailabilitySetRepo, HostRepo, ImageRepo, LeftoverRepo, NetworkRepo, VmRepo
from flexvm.store.scaling import ScaleSetRepo

log = logging.getLogger(__name__)

MAX_USER_DATA = 64 * 1024
MAX_REASONS_KEPT = 20


@dataclass(frozen=True)
class OsDiskSource:
    """An OS disk that comes as a file (an import) instead of an overlay on the image."""

    archive: Path  # a tar holding it
    member: str
    disk_bytes: int


@dataclass
class ConsoleChunk:
    text: str
    next_offset: int


class VmService:
    def __init__(
        self,
        db: Database,
        runner: OperationRunner,
        hosts: HostService,
        sizes: SizeService,
        images: ImageService,
        settings: Settings,
        networks: NetworkService | None = None,
    ) -> None:
        self.networks = networks or NetworkService(db)
        self.consoles = ConsoleArchive(settings.home / "consoles")
        self.db = db
        self.runner = runner
        self.hosts = hosts
        self.sizes = sizes
        self.images = images
        self.settings = settings

    # --- reading -------------------------------------------------------------------------
    def list(self) -> list[Vm]:
        with self.db.session() as session:
            return VmRepo(session).list()

    def get(self, name: str) -> Vm:
        with self.db.session() as session:
            return VmRepo(session).get(name)

    def console(self, name: str, offset: int = 0) -> ConsoleChunk:
        """Console output from ``offset``: what earlier hosts logged (archived), then the live log."""
        vm = self.get(name)
        offset = max(0, offset)
        archived = self.consoles.size(vm.id)
        data = self.consoles.read(vm.id, offset) if offset < archived else b""
        host = vm.host or vm.disk_host
        if host is not None:
            data += self.hosts.driver(host).console_read(vm.console_log, max(0, offset - archived))
        return ConsoleChunk(data.decode(errors="replace"), offset + len(data))

    # --- create --------------------------------------------------------------------------
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
    ) -> Operation:
        check_name("name", name)
        size = self.sizes.get(size_name)
        ceiling = self._ceiling(size, max_size)
        if user_data is not None and len(user_data.encode()) > MAX_USER_DATA:
            raise InvalidInput("user_data", f"is {len(user_data.encode())} bytes; the limit is {MAX_USER_DATA}")
        with self.db.session() as session:
            image = ImageRepo(session).find(image_name)
            if image is None:
                known = (
                    ", ".join(i.name for i in ImageRepo(session).list())
                    or "none; build one with `flexvm image build tiny`"
                )
                raise InvalidInput("image", f"unknown image '{image_name}'; known images: {known}")
            if user_data is not None and not image.cloud_init:
                raise InvalidInput(
                    "user_data", f"image '{image_name}' does not run cloud-init, so user data would be ignored"
                )
            if host is not None:
                HostRepo(session).get(host)
            if availability_set is not None:
                AvailabilitySetRepo(session).get(availability_set)
                _refuse_a_scale_sets_availability_set(session, availability_set, name)
            if network is not None:
                NetworkRepo(session).get(network)
            vms = VmRepo(session)
            if vms.find(name) is not None:
                raise AlreadyExists("VM", name)
            vm_id = str(uuid.uuid4())
            disk_bytes = max(size.disk_bytes, image.virtual_size, os_disk.disk_bytes if os_disk else 0)
            disks = [Disk(f"{name}-os.qcow2", "os", disk_bytes)]
            if image.cloud_init:
                disks.append(Disk(f"{name}-seed.iso", "seed", 0))
            vm = Vm(
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
            placement = place_vm(session, vm, image, pinned=host, policy=policy)
            vms.add(vm)
            session.flush()
            operation = self.runner.record(
                session,
                "vm.create",
                "vm",
                name,
                vm=vm,
                params={
                    "size": size.name,
                    "image": image.name,
                    "host": vm.host,
                    "pinned": host,
                    "availability_set": availability_set,
                    "policy": policy,
                    # Why other hosts were passed over; a sample, not 10,000 reasons.
                    "rejected": dict(list(placement.rejected.items())[:MAX_REASONS_KEPT]),
                },
            )
        return self.runner.launch(
            operation, lambda ctx: self._create_work(ctx, vm, image, pinned=host, policy=policy, os_disk=os_disk)
        )

    def _ceiling(self, size: Size, max_size: str | None) -> Size:
        """How far the VM may later grow without a restart: its family's largest size by default."""
        if max_size is None:
            return self.sizes.ceiling_for(size)
        ceiling = self.sizes.get(max_size)
        if ceiling.vcpus < size.vcpus or ceiling.memory_mib < size.memory_mib:
            raise InvalidInput(
                "max_size",
                f"{ceiling.name} ({ceiling.describe()}) is smaller than {size.name} ({size.describe()})",
            )
        return ceiling

    def _create_work(
        self,
        ctx: OperationContext,
        vm: Vm,
        image: Image,
        *,
        pinned: str | None,
        policy: str,
        os_disk: OsDiskSource | None = None,
    ) -> dict[str, Any]:
        """Build the guest on its host; if the host dies before the guest runs, move to another."""
        failed_hosts: list[str] = []
        while True:
            assert vm.host is not None
            try:
                driver, started = self._build_guest(ctx, vm, image, os_disk)
                break
            except HypervisorUnavailable as err:
                failed_hosts.append(vm.host)
                self._roll_back_create(vm, err, keep_record=True)
                if pinned is not None:
                    self.discard(vm)
                    raise
                try:
                    self._move_claim(vm, image, frozenset(failed_hosts), policy)
                except FlexvmError:
                    self.discard(vm)
                    raise err from None
                ctx.result["failed_over_from"] = list(failed_hosts)
                ctx.progress(10, f"host {failed_hosts[-1]} stopped answering; trying host {vm.host}")
            except Exception as err:
                self._roll_back_create(vm, err, keep_record=False)
                raise
        ctx.result["host"] = vm.host
        ctx.progress(60, "waiting for the guest to report ready")
        return self.finish_boot(ctx, driver, vm, image, console_offset=0, started=started, creating=True)

    def _build_guest(
        self, ctx: OperationContext, vm: Vm, image: Image, os_disk: OsDiskSource | None = None
    ) -> tuple[Driver, float]:
        assert vm.host is not None
        driver = self.hosts.driver(vm.host)
        host = self.hosts.get(vm.host)
        for nic in vm.nics:
            if nic.ip is not None and nic.network != "user":
                self.networks.publish(nic.network, nic.mac, nic.ip)
        self._clear_own_leftovers(driver, vm)
        with ctx.step("image", f"making sure image '{image.name}' is on host {vm.host}"):
            ctx.result["image_uploaded"] = self.images.ensure_on_host(driver, image)
        ctx.progress(20, "creating the OS disk")
        if os_disk is None:
            with ctx.step("os-disk", f"{format_bytes(vm.disk_bytes)} copy-on-write overlay on '{image.name}'"):
                driver.delete_instance_volume(vm.console_log)  # a stale log must not fake readiness
                driver.create_overlay(
                    vm.os_disk.name, guest_boot.image_volume(image, "disk"), image.format, vm.disk_bytes
                )
        else:
            with ctx.step("os-disk", f"the disk from {os_disk.archive.name}"):
                driver.delete_instance_volume(vm.console_log)
                self._upload_disk_from(driver, vm, os_disk)
        if image.cloud_init:
            with ctx.step("seed", "cloud-init NoCloud seed"):
                self.upload_seed(driver, vm)
        with ctx.step("define", f"defining the guest on {vm.host} ({host.accelerator.value})"):
            driver.define(guest_boot.guest_spec(vm, image, host.accelerator, host.bridge))
        ctx.progress(40, "starting")
        with ctx.step("start", "powering on"):
            started = time.monotonic()
            driver.start(vm.domain_name)
        return driver, started

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
            driver.upload_instance_volume(vm.os_disk.name, Path(tmp) / source.member)
        if vm.disk_bytes > source.disk_bytes:  # imported at a size with a larger disk
            driver.resize_instance_volume(vm.os_disk.name, vm.disk_bytes, guest=None)

    def _move_claim(self, vm: Vm, image: Image, excluded: frozenset[str], policy: str) -> None:
        """Re-place a VM whose host failed mid-create, in one transaction: new host, new address."""
        with self.db.session() as session:
            vms = VmRepo(session)
            current = vms.by_id(vm.id)
            assert current is not None
            current.host = current.disk_host = None
            # A fresh create may land on any network: its address is reserved anew wherever it goes.
            current.nics = [Nic("user", nic.mac) for nic in current.nics[:1]]
            vms.save(current)
            session.flush()
            place_vm(session, current, image, excluded=excluded, policy=policy)
            vms.save(current)
        for old in vm.nics:
            if old.network != "user" and all(new.network != old.network for new in current.nics):
                self.networks.withdraw(old.network, old.mac)
        vm.host, vm.disk_host, vm.nics = current.host, current.disk_host, current.nics

    def upload_seed(self, driver: Driver, vm: Vm) -> None:
        seed = next(d for d in vm.disks if d.role == "seed")
        with tempfile.TemporaryDirectory(prefix="flexvm-seed-") as tmp:
            path = Path(tmp) / seed.name
            build_nocloud_seed(
                path, instance_id=vm.id, hostname=vm.name, user_data=vm.user_data, ssh_keys=list(self.settings.ssh_keys)
            )
            driver.upload_instance_volume(seed.name, path)

    def _roll_back_create(self, vm: Vm, cause: BaseException, *, keep_record: bool) -> None:
        """Undo a create that failed before the guest ran. What an unreachable host keeps is
        recorded as leftovers there (removed when it answers again), so nothing is orphaned unseen."""
        assert vm.host is not None
        try:
            remove_guest_and_files(self.hosts.driver(vm.host), vm)
        except FlexvmError as err:
            log.warning("rollback of %s on %s incomplete (%s); recorded as leftovers", vm.name, vm.host, err.message)
            with self.db.session() as session:
                leftovers = LeftoverRepo(session)
                reason = f"create of VM {vm.name} (id {vm.id}) failed: {cause}"
                leftovers.add(vm.host, "domain", vm.domain_name, reason)
                for volume in [d.name for d in vm.disks] + [vm.console_log]:
                    leftovers.add(vm.host, "volume", volume, reason)
        if not keep_record:
            self.discard(vm)

    def discard(self, vm: Vm) -> None:
        """Forget a VM whose guest and disks are gone: its row (and so its claim), its addresses
        and its archived console."""
        self.consoles.forget(vm.id)
        with self.db.session() as session:
            held = NetworkService.release(session, vm.id)
            VmRepo(session).delete(vm.id)
        for network, _ip, mac in held:
            self.networks.withdraw(network, mac)

    def finish_boot(
        self,
        ctx: OperationContext,
        driver: Driver,
        vm: Vm,
        image: Image,
        *,
        console_offset: int,
        started: float,
        creating: bool,
    ) -> dict[str, Any]:
        try:
            with ctx.step("wait-ready", "waiting for the guest's readiness line"):
                ready = guest_boot.wait_until_ready(
                    driver,
                    vm,
                    image.ready_marker,
                    console_offset=console_offset,
                    started=started,
                    timeout=self.settings.ready_timeout,
                )
        except OperationTimeout as err:
            # Keep the guest: the user will want its console to see why it hung.
            self.update_record(
                vm.id,
                provisioning_state=ProvisioningState.FAILED if creating else None,
                power_state=PowerState.RUNNING,
                error=err.message.splitlines()[0],
            )
            raise
        except FlexvmError as err:
            self.update_record(
                vm.id,
                provisioning_state=ProvisioningState.FAILED if creating else None,
                power_state=PowerState.STOPPED,
                error=err.message.splitlines()[0],
            )
            raise
        ip = ready.facts.get("ip")

        def apply(v: Vm) -> None:
            v.provisioning_state = ProvisioningState.SUCCEEDED
            v.power_state = PowerState.RUNNING
            v.ready_at = utcnow()
            v.boot_seconds = round(ready.seconds, 3)
            v.error = None
            for nic in v.nics[:1]:
                # A reserved address is the record; what the guest reports fills in only where
                # flexvm reserves none (QEMU's user network).
                if nic.network == "user":
                    nic.ip = ip if ip and ip != "none" else None

        self.change_record(vm.id, apply)
        result: dict[str, Any] = {"boot_seconds": round(ready.seconds, 3), "guest": ready.facts}
        reserved = [nic.ip for nic in vm.nics if nic.network != "user" and nic.ip]
        if reserved and ip and ip not in reserved:
            # The network's DHCP did not hand out the reservation: say so rather than hide it.
            result["warnings"] = [f"the guest reports address {ip}, but {reserved[0]} is reserved for it"]
        return result

    # --- power ---------------------------------------------------------------------------
    def start(self, name: str) -> Operation:
        with self.db.session() as session:
            vms = VmRepo(session)
            vm = vms.get(name)
            self.check_usable(vm)
            check_action(vm.name, "start", vm.power_state)
            was = vm.power_state
            if was is PowerState.DEALLOCATED:
                # Claim CPU and memory again where the disk lives, in this transaction.
                assert vm.disk_host is not None
                host = HostRepo(session).lock(vm.disk_host)
                vcpus, memory, disk = vms.allocated_on(host.name)
                reason = why_not(room_on(host, Allocation(vcpus, memory, disk)), vm.vcpus, vm.memory_mib, 0)
                if reason:
                    raise CapacityError(
                        f"cannot start '{name}' on host {host.name}: {reason}", details={"hosts": {host.name: reason}}
                    )
                vm.host = host.name
            vm.power_state = PowerState.STARTING
            operation = self.runner.record(session, "vm.start", "vm", name, vm=vm, params={"was": was.value})
            image = ImageRepo(session).get(vm.image)
        return self.runner.launch(operation, lambda ctx: self._start_work(ctx, vm, image, was))

    def _start_work(self, ctx: OperationContext, vm: Vm, image: Image, was: PowerState) -> dict[str, Any]:
        assert vm.host is not None
        driver = self.hosts.driver(vm.host)
        try:
            info = driver.guest_info(vm.domain_name)
            if info is not None and info.plugged_memory_kib and info.plugged_memory_kib != vm.memory_mib * 1024:
                # Memory was hot-plugged (or ballooned) while it ran: start it at its size, DIMMs folded away.
                with ctx.step("redefine", f"at its size, {vm.size}"):
                    driver.undefine(vm.domain_name)
                info = None
            if was is PowerState.DEALLOCATED or info is None:
                # Deallocated (or undefined behind flexvm's back): the disk is there, define anew.
                host = self.hosts.get(vm.host)
                with ctx.step("image", f"making sure image '{image.name}' is on host {vm.host}"):
                    self.images.ensure_on_host(driver, image)
                with ctx.step("define", "defining the guest again"):
                    driver.define(guest_boot.guest_spec(vm, image, host.accelerator, host.bridge))
            offset = guest_boot.console_length(driver, vm.console_log)
            with ctx.step("start", "powering on"):
                started = time.monotonic()
                driver.start(vm.domain_name)
        except FlexvmError:
            self._back_to(vm, was, driver)
            raise
        return self.finish_boot(ctx, driver, vm, image, console_offset=offset, started=started, creating=False)

    def _back_to(self, vm: Vm, was: PowerState, driver: Driver) -> None:
        """A start that failed: leave the VM as it was, releasing a claim it just made."""
        if was is PowerState.DEALLOCATED:
            try:
                driver.undefine(vm.domain_name)
            except FlexvmError as err:
                log.warning("could not undefine %s after a failed start: %s", vm.name, err.message)
            self.update_record(vm.id, power_state=was, host=None)
        else:
            self.update_record(vm.id, power_state=was)

    def stop(self, name: str, *, force: bool = False) -> Operation:
        return self._power_action(
            name, "stop", PowerState.STOPPING, lambda ctx, vm: self._stop_work(ctx, vm, force=force), force=force
        )

    def restart(self, name: str) -> Operation:
        return self._power_action(name, "restart", PowerState.STOPPING, self._restart_work)

    def deallocate(self, name: str) -> Operation:
        return self._power_action(name, "deallocate", PowerState.DEALLOCATING, self._deallocate_work)

    def _power_action(self, name: str, action: str, transitional: PowerState, work: Any, **params: Any) -> Operation:
        with self.db.session() as session:
            vm = VmRepo(session).get(name)
            self.check_usable(vm)
            check_action(vm.name, action, vm.power_state)
            vm.power_state = transitional
            operation = self.runner.record(session, f"vm.{action}", "vm", name, vm=vm, params=params)
        return self.runner.launch(operation, lambda ctx: work(ctx, vm))

    def check_usable(self, vm: Vm) -> None:
        if vm.active_operation_id is not None:
            # Say "busy with X" before any state complaint: the state is X's doing.
            raise Busy("VM", vm.name, vm.active_operation_id)
        if vm.provisioning_state is ProvisioningState.DELETING:
            raise InvalidState(f"VM '{vm.name}' is being deleted")
        if vm.host is None and vm.disk_host is None:
            raise InvalidState(f"VM '{vm.name}' has no host or disk (its create failed); delete it and create it again")

    def power_off(self, ctx: OperationContext, driver: Driver, vm: Vm, *, force: bool) -> bool:
        """Graceful ACPI shutdown within the stop timeout, then the power is pulled. True if forced."""
        info = driver.guest_info(vm.domain_name)
        if info is None or info.state is GuestState.SHUTOFF:
            return False
        if not force:
            with ctx.step("shutdown", f"asking the guest to power off (up to {self.settings.stop_timeout:.0f} s)"):
                driver.shutdown(vm.domain_name)
                deadline = time.monotonic() + self.settings.stop_timeout
                while time.monotonic() < deadline:
                    info = driver.guest_info(vm.domain_name)
                    if info is None or info.state is GuestState.SHUTOFF:
                        return False
                    time.sleep(0.25)
        with ctx.step("power-off", "pulling the power"):
            driver.destroy(vm.domain_name)
        return True

    def _stop_work(self, ctx: OperationContext, vm: Vm, *, force: bool) -> dict[str, Any]:
        assert vm.host is not None
        driver = self.hosts.driver(vm.host)
        try:
            forced = self.power_off(ctx, driver, vm, force=force)
        except FlexvmError:
            self.resync(driver, vm)
            raise
        self.update_record(vm.id, power_state=PowerState.STOPPED)
        return {"forced": forced}

    def _restart_work(self, ctx: OperationContext, vm: Vm) -> dict[str, Any]:
        assert vm.host is not None
        driver = self.hosts.driver(vm.host)
        image = self.images.get(vm.image)
        try:
            forced = self.power_off(ctx, driver, vm, force=False)
            self.update_record(vm.id, power_state=PowerState.STARTING)
            offset = guest_boot.console_length(driver, vm.console_log)
            with ctx.step("start", "powering on"):
                started = time.monotonic()
                driver.start(vm.domain_name)
        except FlexvmError:
            self.resync(driver, vm)
            raise
        result = self.finish_boot(ctx, driver, vm, image, console_offset=offset, started=started, creating=False)
        return {"forced": forced, **result}

    def _deallocate_work(self, ctx: OperationContext, vm: Vm) -> dict[str, Any]:
        assert vm.host is not None
        driver = self.hosts.driver(vm.host)
        try:
            forced = self.power_off(ctx, driver, vm, force=False)
            with ctx.step("undefine", f"releasing host {vm.host}'s CPU and memory"):
                driver.undefine(vm.domain_name)
        except FlexvmError:
            self.resync(driver, vm)
            raise
        self.update_record(vm.id, power_state=PowerState.DEALLOCATED, host=None)
        return {"forced": forced, "disk_kept_on": vm.disk_host}

    def resync(self, driver: Driver, vm: Vm) -> None:
        """After a failed power change, record what the host really shows."""
        try:
            info = driver.guest_info(vm.domain_name)
        except FlexvmError:
            self.update_record(vm.id, power_state=PowerState.UNKNOWN)
            return
        self.update_record(vm.id, power_state=power_state_of(info.state if info else None))

    # --- delete --------------------------------------------------------------------------
    def delete(self, name: str) -> Operation:
        with self.db.session() as session:
            vm = VmRepo(session).get(name)
            vm.provisioning_state = ProvisioningState.DELETING
            operation = self.runner.record(session, "vm.delete", "vm", name, vm=vm)
        return self.runner.launch(operation, lambda ctx: self.delete_work(ctx, vm))

    def delete_work(self, ctx: OperationContext, vm: Vm) -> dict[str, Any]:
        host = vm.host or vm.disk_host
        if host is not None:
            driver = self.hosts.driver(host)
            with ctx.step("remove", f"removing the guest and its disks from host {host}"):
                try:
                    remove_guest_and_files(driver, vm)
                except FlexvmError:
                    self.update_record(
                        vm.id,
                        provisioning_state=ProvisioningState.FAILED,
                        error="delete failed; the guest or its disks may remain: retry the delete",
                    )
                    raise
        self.discard(vm)
        return {}

    # --- disks ---------------------------------------------------------------------------
    def resize_disk(self, name: str, size_bytes: int) -> Operation:
        with self.db.session() as session:
            vms = VmRepo(session)
            vm = vms.get(name)
            self.check_usable(vm)
            check_action(vm.name, "resize-disk", vm.power_state)
            if size_bytes == vm.disk_bytes:
                raise InvalidInput("size", f"the OS disk of '{name}' is already {format_bytes(size_bytes)}")
            if size_bytes < vm.disk_bytes:
                raise InvalidInput(
                    "size",
                    f"disks only grow: '{name}' has {format_bytes(vm.disk_bytes)}, "
                    f"and shrinking would destroy the data past {format_bytes(size_bytes)}",
                )
            assert vm.disk_host is not None
            host = HostRepo(session).lock(vm.disk_host)
            room = room_on(host, Allocation(*vms.allocated_on(host.name)))
            reason = why_not(room, 0, 0, size_bytes - vm.disk_bytes)
            if reason:
                raise CapacityError(
                    f"cannot grow the disk of '{name}' on host {host.name}: {reason}",
                    details={"hosts": {host.name: reason}},
                )
            # Claim the new size now (the sum of disk_bytes is what is allocated on the host).
            old_bytes = vm.disk_bytes
            vm.disk_bytes = size_bytes
            operation = self.runner.record(
                session, "vm.resize-disk", "vm", name, vm=vm, params={"from": old_bytes, "to": size_bytes}
            )
        return self.runner.launch(operation, lambda ctx: self._resize_disk_work(ctx, vm, old_bytes, size_bytes))

    def _resize_disk_work(self, ctx: OperationContext, vm: Vm, old_bytes: int, size_bytes: int) -> dict[str, Any]:
        assert vm.disk_host is not None
        driver = self.hosts.driver(vm.disk_host)
        info = driver.guest_info(vm.domain_name) if vm.host else None
        online = info is not None and info.state is GuestState.RUNNING
        try:
            with ctx.step(
                "grow", f"{format_bytes(old_bytes)} -> {format_bytes(size_bytes)}" + (" online" if online else "")
            ):
                driver.resize_instance_volume(vm.os_disk.name, size_bytes, guest=vm.domain_name if online else None)
        except FlexvmError:
            self.update_record(vm.id, disk_bytes=old_bytes)  # release the claim made at request time
            raise

        def apply(v: Vm) -> None:
            v.disk_bytes = size_bytes
            for disk in v.disks:
                if disk.role == "os":
                    disk.size_bytes = size_bytes

        self.change_record(vm.id, apply)
        return {"online": online, "size_bytes": size_bytes}

    # --- helpers -------------------------------------------------------------------------
    def update_record(self, vm_id: str, **changes: Any) -> None:
        """Set fields of a VM's record. None means "leave it" for the states, and "clear it" for
        the fields whose empty value is None (host, error, moving_to)."""
        clearable = ("host", "error", "moving_to")

        def apply(vm: Vm) -> None:
            for key, value in changes.items():
                if value is not None or key in clearable:
                    setattr(vm, key, value)

        self.change_record(vm_id, apply)

    def change_record(self, vm_id: str, apply: Any) -> None:
        with self.db.session() as session:
            repo = VmRepo(session)
            vm = repo.by_id(vm_id)
            if vm is None:
                return
            apply(vm)
            repo.save(vm)


def power_state_of(state: GuestState | None) -> PowerState:
    if state is None or state in (GuestState.SHUTOFF, GuestState.CRASHED):
        return PowerState.STOPPED
    if state is GuestState.SHUTDOWN:
        return PowerState.STOPPING
    if state in (GuestState.RUNNING, GuestState.PAUSED):
        return PowerState.RUNNING
    return PowerState.UNKNOWN


def remove_guest_and_files(driver: Driver, vm: Vm) -> None:
    """Power off, undefine, and delete every volume the VM owns. Safe to repeat."""
    driver.destroy(vm.domain_name)
    driver.undefine(vm.domain_name)
    for disk in vm.disks:
        driver.delete_instance_volume(disk.name)
    driver.delete_instance_volume(vm.console_log)


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
            f"availability set '{availability_set}' belongs to scale set '{owner.name}' and holds only its "
            f"instances; add one with `flexvm scaleset scale {owner.name} --instances N`",
        )
