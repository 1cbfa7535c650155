"""Placement inside a transaction: snapshot the pool, choose a host, and claim it for a VM.

Everything here takes the caller's session, so the snapshot, the choice and the claim (the VM
row's host, its address) commit together or not at all. With SQLite the transaction holds the
write lock from its first statement (BEGIN IMMEDIATE); with PostgreSQL the host rows are locked.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from flexvm.capacity.fit import Allocation, room_on
from flexvm.compute.guest_boot import mac_for
from flexvm.model.image import Image
from flexvm.model.projects import project_of
from flexvm.model.vm import Nic, Vm
from flexvm.scheduler.placement import HostSnapshot, Placement, Request, SetSpread, choose
from flexvm.store.repositories import AvailabilitySetRepo, HostRepo, NetworkRepo, VmRepo


def pool_snapshots(session: Session, *, lock: bool = True) -> list[HostSnapshot]:
    hosts = HostRepo(session).lock_all() if lock else HostRepo(session).list()
    allocations = VmRepo(session).allocations()
    return [HostSnapshot(h, room_on(h, Allocation(*allocations.get(h.name, (0, 0, 0))))) for h in hosts]


def spread_of(session: Session, set_name: str, *, leaving: str | None = None) -> SetSpread:
    """Where an availability set's VMs are now (by fault domain), ``leaving`` not counted. A
    deallocated member counts where its disk is: that is where it starts again."""
    availability_set = AvailabilitySetRepo(session).get(set_name)
    hosts = {h.name: h for h in HostRepo(session).list()}
    counts: dict[str, int] = {}
    for vm in VmRepo(session).in_set(set_name):
        home = vm.host or vm.disk_host
        if home is None or vm.name == leaving:
            continue
        host = hosts.get(home)
        domain = (host.fault_domain if host else None) or home
        counts[domain] = counts.get(domain, 0) + 1
    return SetSpread(set_name, availability_set.fault_domains, counts)


def build_request(
    session: Session,
    vm: Vm,
    image: Image,
    *,
    pinned: str | None = None,
    excluded: frozenset[str] = frozenset(),
    disk: bool = True,
) -> Request:
    return Request(
        vm.vcpus,
        vm.memory_mib,
        vm.disk_bytes if disk and vm.storage is None else 0,  # a shared disk takes no host's disk
        pinned=pinned,
        excluded=excluded,
        requires=frozenset(image.requires),
        spread=spread_of(session, vm.availability_set, leaving=vm.name) if vm.availability_set else None,
        # A NIC on a network ties the VM to hosts on it: its address lives there, or (a scale
        # set's instance) the load balancer can only reach it there.
        network=next((nic.network for nic in vm.nics if nic.network != "user"), None),
    )


def place_vm(
    session: Session,
    vm: Vm,
    image: Image,
    *,
    pinned: str | None = None,
    excluded: frozenset[str] = frozenset(),
    policy: str = "best-fit",
) -> Placement:
    """Choose a host for ``vm`` (not yet counted anywhere) and point the record at it."""
    placement = choose(
        pool_snapshots(session), build_request(session, vm, image, pinned=pinned, excluded=excluded), policy=policy
    )
    vm.host = vm.disk_host = placement.host.name
    attach_nics(session, vm, placement.host.network)
    return placement


def attach_nics(session: Session, vm: Vm, network: str | None) -> None:
    """One NIC on the host's network (an address reserved) or on QEMU's user network."""
    from flexvm.compute.networks import NetworkService

    NetworkService.release(session, vm.id)
    mac = vm.nics[0].mac if vm.nics else mac_for(vm.id)
    if network is None:
        vm.nics = [Nic("user", mac)]
        return
    repo = NetworkRepo(session)
    repo.get(network)
    # MACs are derived from the VM's id (24 bits of a hash): on a shared network, make sure no
    # other NIC has it, or two guests would answer for one address and share one reservation.
    taken = repo.macs(network)
    attempt = 0
    while mac in taken:
        attempt += 1
        mac = mac_for(vm.id, attempt)
    vm.nics = [Nic(network, mac, NetworkService.reserve(session, network, vm.id, mac, project_of(vm.name)))]
