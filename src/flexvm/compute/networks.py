"""Networks and address management: each guest NIC on a flexvm network gets a reserved address.

Reservations are made in the same transaction as the VM's placement (the addresses table's
primary key makes a double reservation impossible). When the network's DHCP server is flexvm's
to feed (the lab's dnsmasq), each reservation is also a 'MAC,IP' file in its hosts directory,
which dnsmasq reads without a restart.
"""

from __future__ import annotations

import builtins
import logging
import os
from pathlib import Path

from sqlalchemy.orm import Session

from flexvm.errors import CapacityError, Conflict
from flexvm.model.names import check_name
from flexvm.model.network import Network
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import HostRepo, NetworkRepo

log = logging.getLogger(__name__)


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
    def reserve(session: Session, network_name: str, vm_id: str, mac: str) -> str:
        repo = NetworkRepo(session)
        network = repo.get(network_name)
        used = repo.used_addresses(network_name)
        # Round the range from the last one handed out: a freed address is reused last, since a DHCP
        # server may still hold its lease for the old MAC and would not give it to a new one.
        candidates = list(network.addresses())
        start = candidates.index(network.last_allocated) + 1 if network.last_allocated in candidates else 0
        free = next((ip for ip in candidates[start:] + candidates[:start] if ip not in used), None)
        if free is None:
            raise CapacityError(
                f"network '{network_name}' has no free address left in {network.range_start}-{network.range_end}"
            )
        repo.reserve(network_name, free, vm_id, mac)
        repo.set_last_allocated(network_name, free)
        return free

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
