"""The Driver protocol: everything flexvm asks of a host, in one place.

Two implementations: ``fake.FakeDriver`` (in memory, for unit tests and scale benchmarks)
and ``libvirt.driver.LibvirtDriver`` (real QEMU guests). The contract tests in
``tests/contract`` run the same checks against both.

Storage is two pools per host, named by the driver: an *image* pool holding image files
(named by content, so each is uploaded once per host) and an *instance* pool holding each
VM's OS disk overlay, its cloud-init seed and its serial-console log. Everything a driver
does to files goes through the hypervisor connection, so a remote host needs no other access.

A VM on shared storage keeps what would be in the instance pool in a directory every host sees
(``store``, a pool of its own on each host): the instance-volume methods take it as ``store``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from flexvm.model.guest import (
    GuestInfo,
    GuestNic,
    GuestSpec,
    MemoryStats,
    MigrationProgress,
    MigrationRequest,
    MigrationResult,
)
from flexvm.model.host import AcceleratorChoice, HostInfo
from flexvm.model.metrics import HostReading
from flexvm.model.network import Isolation
from flexvm.model.storage import SharedStorage


class Driver(ABC):
    uri: str

    # --- host facts ----------------------------------------------------------------------
    @abstractmethod
    def host_info(self) -> HostInfo:
        """CPUs, memory, versions and instance-pool space of the host."""

    @abstractmethod
    def probe_accelerator(self, probe_kernel: Path | None) -> AcceleratorChoice:
        """KVM only if it really runs a guest here (boots ``probe_kernel`` to prove it), else TCG."""

    # --- storage -------------------------------------------------------------------------
    @abstractmethod
    def has_image_volume(self, volume: str) -> bool:
        """Whether the image pool holds a volume of that name."""

    @abstractmethod
    def upload_image_volume(self, volume: str, source: Path) -> None:
        """Copy a local file into the image pool (atomically: a failed upload leaves nothing)."""

    @abstractmethod
    def delete_image_volume(self, volume: str) -> None:
        """Remove a volume from the image pool; a missing one is not an error. Refused (InvalidState)
        while any disk in the instance pool is an overlay on it, whoever made that disk."""

    @abstractmethod
    def create_overlay(
        self,
        volume: str,
        backing_volume: str,
        backing_format: str,
        size_bytes: int,
        *,
        store: SharedStorage | None = None,
    ) -> None:
        """A qcow2 in the instance pool backed by an image-pool volume, of the given virtual size."""

    @abstractmethod
    def upload_instance_volume(self, volume: str, source: Path, *, store: SharedStorage | None = None) -> None:
        """Copy a local file (e.g. a cloud-init seed) into the instance pool."""

    @abstractmethod
    def delete_instance_volume(self, volume: str, *, store: SharedStorage | None = None) -> None:
        """Remove a volume from the instance pool; a missing one is not an error."""

    @abstractmethod
    def list_instance_volumes(self) -> list[str]:
        """Names of every volume in the instance pool."""

    @abstractmethod
    def resize_instance_volume(
        self, volume: str, size_bytes: int, *, guest: str | None, store: SharedStorage | None = None
    ) -> None:
        """Grow a disk. With ``guest`` running, online (the guest sees the new size at once)."""

    @abstractmethod
    def check_storage(self, store: SharedStorage) -> None:
        """Make sure the host reaches the shared directory and can write there (its pool defined
        and started on first use); raises HypervisorError saying what is wrong when it cannot."""

    # --- guests --------------------------------------------------------------------------
    @abstractmethod
    def define(self, spec: GuestSpec) -> None:
        """Make a persistent guest from a spec. Refuses a name already in use on the host."""

    @abstractmethod
    def start(self, name: str) -> None: ...

    @abstractmethod
    def shutdown(self, name: str) -> None:
        """Ask the guest to power off (ACPI power button); returns without waiting."""

    @abstractmethod
    def destroy(self, name: str) -> None:
        """Pull the power. A guest already off is not an error."""

    @abstractmethod
    def undefine(self, name: str) -> None:
        """Forget a (stopped) guest's definition. A missing guest is not an error."""

    @abstractmethod
    def guest_info(self, name: str) -> GuestInfo | None:
        """The guest's facts, or None when the host has no guest of that name."""

    @abstractmethod
    def list_guests(self) -> list[GuestInfo]: ...

    @abstractmethod
    def console_read(self, log_volume: str, offset: int = 0, *, store: SharedStorage | None = None) -> bytes:
        """Serial-console output logged so far, from ``offset`` (b"" when there is none yet)."""

    # --- change while running ------------------------------------------------------------
    @abstractmethod
    def set_vcpus(self, name: str, vcpus: int) -> None:
        """Hot-plug or unplug vCPUs (live, and in the persistent definition), within max_vcpus."""

    @abstractmethod
    def attach_memory(self, name: str, size_mib: int) -> None:
        """Hot-plug a DIMM of ``size_mib`` (live and persistent), within max_memory_mib and the slots."""

    @abstractmethod
    def set_memory_target(self, name: str, memory_mib: int) -> None:
        """Ask the balloon to leave the guest ``memory_mib`` (live and persistent currentMemory)."""

    @abstractmethod
    def memory_stats(self, name: str) -> MemoryStats:
        """The balloon's view of the guest's memory."""

    # --- mobility ------------------------------------------------------------------------
    @abstractmethod
    def migrate(
        self, name: str, request: MigrationRequest, progress: Callable[[MigrationProgress], None] | None = None
    ) -> MigrationResult:
        """Live-migrate a running guest to ``request.dest_uri`` (persistent there, undefined here).

        The destination must already hold the guest's image volumes and an overlay of each of its
        instance disks (same names, same backing): only the overlays' data is copied. With
        ``request.copy_storage`` off (the disks are on shared storage) only memory moves. A migration
        that fails, or has not finished after ``max_seconds`` even with auto-converge (and, if
        allowed, post-copy), is aborted and the guest keeps running here, disks intact.
        """

    @abstractmethod
    def migration_running(self, name: str) -> bool:
        """Whether a migration of the guest is under way on this host (started by a server that
        has since died, say): a resumed move waits for it rather than start a second one."""

    @abstractmethod
    def download_instance_volume(self, volume: str, target: Path, *, store: SharedStorage | None = None) -> None:
        """Copy an instance-pool volume (e.g. a stopped guest's disk) to a local file."""

    # --- measurements --------------------------------------------------------------------
    @abstractmethod
    def read_counters(self) -> HostReading:
        """The host's CPU and memory counters and every guest's, in as few calls as the
        hypervisor allows (the collector reads this every few seconds)."""

    # --- snapshots (internal to the guest's qcow2 disks) ---------------------------------
    @abstractmethod
    def create_snapshot(self, name: str, snapshot: str) -> None:
        """Snapshot a guest: its disks, and its memory too while it runs (the guest pauses for it)."""

    @abstractmethod
    def list_snapshots(self, name: str) -> list[str]:
        """The guest's snapshots, oldest first."""

    @abstractmethod
    def revert_snapshot(self, name: str, snapshot: str) -> None:
        """Go back to a snapshot (running again if it was taken running)."""

    @abstractmethod
    def delete_snapshot(self, name: str, snapshot: str) -> None: ...

    # --- project isolation on the host's bridge ------------------------------------------
    @abstractmethod
    def apply_isolation(self, isolation: Isolation) -> None:
        """Define (or update in place) the project's filter on this host; its guests' NICs name
        it, and an update reaches those already running."""

    @abstractmethod
    def isolate_nic(self, name: str, nic: GuestNic) -> bool:
        """Make a defined guest's NIC (found by its MAC) carry ``nic``'s filter, running or not;
        False when it did already. For guests defined before projects had isolated networks."""

    @abstractmethod
    def remove_isolation(self, name: str) -> None:
        """Forget a project's filter (no NIC on this host may still name it); absent is fine."""

    def close(self) -> None:  # noqa: B027 - optional hook, most drivers hold nothing
        """Release the connection."""
