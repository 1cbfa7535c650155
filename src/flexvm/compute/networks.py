"""Networks and address management: each guest NIC on a flexvm network gets a reserved address.

Reservations are made in the same transaction as the VM's placement (the addresses table's
primary key makes a double reservation impossible), each from a block of the range that is the
VM's project's own (see ``model.network`` for why). When the network's DHCP server is flexvm's
to feed (the lab's dnsmasq), each reservation is also a 'MAC,IP' file in its hosts directory,
which dnsmasq reads without a restart.
"""

from __future__ import annotations

import builtins
import ipaddress
import logging
import os
from pathlib import Path

from sqlalchemy.orm import Session

from flexvm.errors import CapacityError, Conflict
from flexvm.model.names import check_name
from flexvm.model.network import BLOCK_ADDRESSES, Isolation, Network, candidate_blocks, guest_space
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import HostRepo, NetworkRepo

log = logging.getLogger(__name__)


def _inside(ip: str, blocks: builtins.list[ipaddress.IPv4Network]) -> bool:
    address = ipaddress.IPv4Address(ip)
    return any(address in block for block in blocks)


def _fresh_in_blocks(
    usable: builtins.list[str], cursors: dict[str, str | None], used: set[str], *, wrap: bool = False
) -> tuple[str, str] | None:
    """(block, address): the first unused address after a block's cursor, blocks in order; with
    ``wrap``, also those before it (the block's oldest freed addresses first)."""
    for cidr, cursor in cursors.items():
        block = ipaddress.IPv4Network(cidr)
        inside = [ip for ip in usable if ipaddress.IPv4Address(ip) in block]
        after = inside.index(cursor) + 1 if cursor in inside else 0
        order = inside[after:] + (inside[:after] if wrap else [])
        free = next((ip for ip in order if ip not in used), None)
        if free is not None:
            return cidr, free
    return None


def _free_block(network: Network, blocks: dict[str, str], used: set[str]) -> str | None:
    """The next block after the last address handed out (round the range) that no project holds
    and no reserved address lies in (addresses reserved before projects had blocks stay put)."""
    taken = [ipaddress.IPv4Address(ip) for ip in used]
    candidates = candidate_blocks(network)
    last = int(ipaddress.IPv4Address(network.last_allocated)) if network.last_allocated else -1
    bases = [int(ipaddress.IPv4Network(cidr).network_address) for cidr in candidates]
    start = next((i for i, base in enumerate(bases) if base > last), 0)
    usable = [ipaddress.IPv4Address(ip) for ip in network.addresses()]
    for cidr in candidates[start:] + candidates[:start]:
        block = ipaddress.IPv4Network(cidr)
        if cidr in blocks or any(address in block for address in taken):
            continue
        if any(address in block for address in usable):  # not only the gateway, say
            return cidr
    return None


def reservation_file(directory: str, mac: str) -> Path:
    return Path(directory) / f"flexvm-{mac.replace(':', '-')}"


class NetworkService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self) -> builtins.list[Network]:
        with self.db.session() as session:
            return NetworkRepo(session).list()

    def get(self, name: str) -> Network:
        with self.db.session() as session:
            return NetworkRepo(session).get(name)

    def create(
        self,
        name: str,
        subnet: str,
        range_start: str,
        range_end: str,
        *,
        gateway: str | None = None,
        dhcp_hosts_dir: str | None = None,
    ) -> Network:
        check_name("name", name)
        network = Network(name, subnet, range_start, range_end, utcnow(), gateway, dhcp_hosts_dir)
        network.check()
        with self.db.session() as session:
            NetworkRepo(session).add(network)
        return network

    def delete(self, name: str) -> None:
        with self.db.session() as session:
            repo = NetworkRepo(session)
            repo.get(name)
            hosts = [h.name for h in HostRepo(session).list() if h.network == name]
            if hosts:
                raise Conflict(f"network '{name}' is used by hosts: {', '.join(hosts)}", details={"hosts": hosts})
            if repo.holders(name):
                raise Conflict(f"network '{name}' still has addresses reserved by VMs")
            repo.delete(name)

    # --- addresses, inside the caller's transaction -------------------------------------
    @staticmethod
    def reserve(session: Session, network_name: str, vm_id: str, mac: str, project: str) -> str:
        """A free address in one of ``project``'s blocks of the network, taking a new block when
        they are used up; the address is the project's, in its isolation, from now on.

        A DHCP server keeps a lease for a MAC after its reservation is gone and will not give that
        address to another MAC meanwhile, so a freed address is reused last: each block hands out
        its addresses in order from where it last stopped, a new block comes before a block wraps
        round, and new blocks are taken round the range from the last one handed out."""
        repo = NetworkRepo(session)
        network = repo.get(network_name)
        used = repo.used_addresses(network_name)
        cursors = repo.block_cursors(network_name, project)
        usable = list(network.addresses())
        pick = _fresh_in_blocks(usable, cursors, used)
        if pick is None:
            block = _free_block(network, repo.blocks(network_name), used)
            if block is not None:
                repo.add_block(network_name, block, project)
                pick = _fresh_in_blocks(usable, {block: None}, used)
        if pick is None:
            pick = _fresh_in_blocks(usable, cursors, used, wrap=True)
        if pick is None:
            raise CapacityError(
                f"network '{network_name}' has no free address for project '{project}': its blocks are "
                f"full and no block of {BLOCK_ADDRESSES} unused addresses is left in "
                f"{network.range_start}-{network.range_end}",
                details={"network": network_name, "project": project},
            )
        cidr, free = pick
        repo.reserve(network_name, free, vm_id, mac, project)
        repo.set_block_cursor(network_name, cidr, free)
        repo.set_last_allocated(network_name, free)
        return free

    @staticmethod
    def isolation(session: Session, network_name: str, project: str) -> Isolation:
        """What ``project``'s guests on the network may reach, as its filter on every host says."""
        repo = NetworkRepo(session)
        network = repo.get(network_name)
        blocks = sorted(cidr for cidr, holder in repo.blocks(network_name).items() if holder == project)
        inside = [ipaddress.IPv4Network(cidr) for cidr in blocks]
        strays = sorted(f"{ip}/32" for ip in repo.addresses_in(network_name, project) if not _inside(ip, inside))
        return Isolation(network_name, project, tuple(blocks + strays), guest_space(network))

    @staticmethod
    def release(session: Session, vm_id: str) -> builtins.list[tuple[str, str, str]]:
        repo = NetworkRepo(session)
        held = repo.addresses_of(vm_id)
        repo.release(vm_id)
        return held

    # --- the DHCP server's view, after the transaction commits ----------------------------
    def publish(self, network_name: str, mac: str, ip: str) -> None:
        network = self.get(network_name)
        if network.dhcp_hosts_dir is None:
            return
        path = reservation_file(network.dhcp_hosts_dir, mac)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"{mac},{ip}\n")
        os.replace(tmp, path)  # dnsmasq must never read half a line

    def withdraw(self, network_name: str, mac: str) -> None:
        with self.db.session() as session:
            network = NetworkRepo(session).find(network_name)
        if network is not None and network.dhcp_hosts_dir is not None:
            reservation_file(network.dhcp_hosts_dir, mac).unlink(missing_ok=True)
