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

from flexvm.compute.addressing import choose_address
from flexvm.errors import CapacityError, Conflict
from flexvm.model.names import check_name
from flexvm.model.network import BLOCK_ADDRESSES, Isolation, Network, guest_space, shared_addresses
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import HostRepo, NetworkRepo

log = logging.getLogger(__name__)


def _inside(ip: str, blocks: builtins.list[ipaddress.IPv4Network]) -> bool:
    address = ipaddress.IPv4Address(ip)
    return any(address in block for block in blocks)


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
        """A free address in one of ``project``'s blocks of the network (``addressing`` says which),
        taking a block when its own are used up; the address is the project's from now on."""
        repo = NetworkRepo(session)
        network = repo.get(network_name)
        choice = choose_address(network, project, repo.block_list(network_name), repo.used_addresses(network_name))
        if choice is None:
            raise CapacityError(
                f"network '{network_name}' has no free address for project '{project}': its blocks are "
                f"full and no block of {BLOCK_ADDRESSES} unused addresses is left in "
                f"{network.range_start}-{network.range_end}",
                details={"network": network_name, "project": project},
            )
        if choice.block == "new":
            repo.add_block(network_name, choice.cidr, project)
        elif choice.block == "taken":
            repo.give_block(network_name, choice.cidr, project)
        repo.reserve(network_name, choice.address, vm_id, mac, project)
        repo.set_block_cursor(network_name, choice.cidr, choice.address)
        repo.set_last_allocated(network_name, choice.address)
        return choice.address

    @staticmethod
    def isolation(session: Session, network_name: str, project: str) -> Isolation:
        """What ``project``'s guests on the network may reach, as its filter on every host says."""
        repo = NetworkRepo(session)
        network = repo.get(network_name)
        blocks = sorted(cidr for cidr, holder in repo.blocks(network_name).items() if holder == project)
        inside = [ipaddress.IPv4Network(cidr) for cidr in blocks]
        strays = sorted(f"{ip}/32" for ip in repo.addresses_in(network_name, project) if not _inside(ip, inside))
        return Isolation(network_name, project, tuple(blocks + strays), guest_space(network), shared_addresses(network))

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
